"""A live rig on loopback: Kamailio, agentd answering with a worked example, caller voices.

Shared by tests/e2e, tools/bench_latency.py and tools/demo.py:

    rig = AgentRig(workdir, example="dental").start()   # blocks until the agent is ready
    caller = ScriptedCaller(rig.pbx_address)
    ...
    rig.stop()

Caller utterances are spoken by espeak-ng (never the agent's voice), resampled to 8 kHz.
"""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
import wave
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tests.harness.agentd import Agentd
from tests.harness.caller import ScriptedCaller
from tests.harness.kamailio import Kamailio
from tests.harness.ports import PortAllocator
from tests.harness.process import HarnessError

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO_ROOT / "models"
DEFAULT_MODEL = "qwen2.5-coder-1.5b-instruct-q4_k_m"
FAST_MODEL = "qwen2.5-coder-0.5b-instruct"
CALLER_VOICE = "en-gb+m3"   # espeak-ng; the agent speaks with hibari/piper
# Whisper tiny.en hears flite's "rms" voice almost word for word at 8 kHz; it turns espeak's
# "James O'Connor, date of birth third of May ..." into "Game Mockinger, made on worth ...".
# Calls whose words matter (names, dates) use this one.
CLEAR_VOICE = "flite:rms"


def missing_requirements(model: str = DEFAULT_MODEL) -> list[str]:
    """What this machine lacks for a live call (binaries, models); empty when ready."""
    missing = [name for name in ("kamailio", "kamcmd", "espeak-ng", "flite")
               if shutil.which(name) is None]
    for name in ("silero-vad", "whisper-tiny-en", model):
        if not (MODELS_DIR / name).is_dir():
            missing.append(f"model {name} (python -m agentd models fetch {name})")
    return missing


@lru_cache(maxsize=256)
def _espeak(text: str, voice: str, rate_wpm: int) -> bytes:
    """`text` spoken at 8 kHz by espeak-ng, or by flite when `voice` is "flite:<voice>"."""
    if voice.startswith("flite:"):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "say.wav"
            subprocess.run(["flite", "-voice", voice[len("flite:"):], "-t", text, "-o",
                            str(out)], capture_output=True, check=True, timeout=30)
            wav = out.read_bytes()
    else:
        wav = subprocess.run(["espeak-ng", "--stdout", "-v", voice, "-s", str(rate_wpm), text],
                             capture_output=True, check=True, timeout=30).stdout
    with wave.open(io.BytesIO(wav)) as reader:
        rate = reader.getframerate()
        pcm = np.frombuffer(reader.readframes(reader.getnframes()), np.int16)
    import soxr

    return np.asarray(soxr.resample(pcm.astype(np.float32), rate, 8000)).clip(
        -32768, 32767).astype(np.int16).tobytes()


def caller_speech(text: str, *, voice: str = CALLER_VOICE, rate_wpm: int = 165,
                  level_dbfs: float = -18.0, tail_s: float = 0.0) -> np.ndarray:
    """`text` in a caller's voice (espeak-ng), int16 at 8 kHz, scaled to a phone-like level,
    followed by `tail_s` of digital silence."""
    pcm = np.frombuffer(_espeak(text, voice, rate_wpm), np.int16).astype(np.float64)
    active = pcm[np.abs(pcm) > 300]
    rms = float(np.sqrt(np.mean(active ** 2))) if active.size else 1.0
    scaled = pcm * (32768 * 10 ** (level_dbfs / 20) / rms)
    out = scaled.clip(-32768, 32767).astype(np.int16)
    return np.concatenate([out, np.zeros(int(tail_s * 8000), np.int16)])


@dataclass(frozen=True)
class CallRow:
    """What the records store holds about one call (read straight from SQLite)."""

    ref: str
    outcome: str | None
    end_reason: str | None
    transfer_target: str | None
    handoff: dict[str, Any] | None
    turns: list[dict[str, Any]]
    tool_calls: list[dict[str, Any]]


class AgentRig:
    """Kamailio on a free loopback port plus agentd (extension 2001) running `example`."""

    def __init__(self, workdir: Path, *, example: str = "dental", model: str = DEFAULT_MODEL,
                 max_calls: int = 4, pbx_port: int | None = None, sip_port: int | None = None,
                 llm_threads: int | None = None, ready_timeout: float = 240.0,
                 always_open: bool = True, log_level: str = "info") -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.example = example
        self.model = model
        self.max_calls = max_calls
        self.llm_threads = llm_threads
        self.ready_timeout = ready_timeout
        self.always_open = always_open
        self.log_level = log_level
        self._ports = PortAllocator()
        self.pbx_port = pbx_port or self._ports.port()
        self.sip_port = sip_port or self._ports.port()
        self.kamailio: Kamailio | None = None
        self.agentd: Agentd | None = None
        self.example_dir = self.workdir / example

    @property
    def pbx_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.pbx_port)

    @property
    def records_db(self) -> Path:
        return self.workdir / "agentd" / "calls.db"

    def dialog_section(self) -> dict[str, Any]:
        from examples import prepare

        policy = prepare(self.example, self.workdir)
        if self.always_open:
            # Tests and benches run at any hour: a closed practice would end every call.
            document = yaml.safe_load(policy.read_text())
            if "hours" in document:
                days = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
                        "sunday")
                document["hours"] = {day: "00:00-23:59" for day in days}
                policy.write_text(yaml.safe_dump(document, sort_keys=False))
        config = yaml.safe_load((self.example_dir / "config.yaml").read_text())
        dialog = dict(config["dialog"])
        dialog["policy_file"] = str(policy)
        llm = dict(dialog.get("llm", {}))
        llm.update(model=self.model, temperature=0.0, seed=42)
        if self.llm_threads is not None:  # else the example's own setting
            llm["threads"] = self.llm_threads
        dialog["llm"] = llm
        return dialog

    def start(self) -> AgentRig:
        """Start Kamailio and agentd; return once agentd registered and logged 'agent ready'."""
        self.kamailio = Kamailio(self.workdir / "kamailio", self.pbx_port).start()
        try:
            self.agentd = Agentd(
                self.workdir / "agentd", registrar_port=self.pbx_port, sip_port=self.sip_port,
                rtp_port_min=self._ports.port_range(40), rtp_port_count=40,
                max_calls=self.max_calls, log_level=self.log_level,
                sections={"dialog": self.dialog_section(), "metrics": {"port": 0}})
            # agentd registers once its models are loaded: ~30 s on a quiet 2-core box, twice
            # that with a core taken, so the registration waits as long as the models may.
            self.agentd.start(self.kamailio, timeout=self.ready_timeout)
            if not self.agentd.wait_log(r"agent ready", self.ready_timeout):
                raise HarnessError("agentd did not load its models in time:\n"
                                   + self.agentd.log_text()[-3000:])
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.agentd is not None:
            self.agentd.stop()
        if self.kamailio is not None:
            self.kamailio.close()

    def __enter__(self) -> AgentRig:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- what the records say -------------------------------------------------------

    def call_ref(self, call_id: str) -> str | None:
        """agentd's short call reference for SIP Call-ID `call_id`, from its log line
        "call <ref> answered: <call-id> ..." (the records store leaves call_id empty)."""
        assert self.agentd is not None
        match = re.search(r"call (\w+) answered: " + re.escape(call_id), self.agentd.log_text())
        return match.group(1) if match else None

    def wait_turn_logged(self, ref: str, index: int, timeout: float) -> bool:
        """Wait (bounded) until agentd logged turn `index` of call `ref` (the reply is done).
        Blocking: from async code use `wait_reply`, or run it in a thread."""
        assert self.agentd is not None
        return self.agentd.wait_log(rf"call {re.escape(ref)} turn {index} ", timeout)

    def turns_logged(self, ref: str) -> list[tuple[int, str]]:
        """(index, kind) of every turn agentd logged as finished for call `ref`, in order;
        kinds are greeting, speech, dtmf, silence (a re-prompt) and transfer_failed."""
        assert self.agentd is not None
        pattern = rf"call {re.escape(ref)} turn (\d+) \((\w+)\)"
        return [(int(i), kind) for i, kind in re.findall(pattern, self.agentd.log_text())]

    def last_turn(self, ref: str) -> int:
        """The highest turn index logged for call `ref` (-1 before the greeting finished)."""
        return max((index for index, _kind in self.turns_logged(ref)), default=-1)

    async def wait_reply(self, caller: ScriptedCaller, ref: str, after_turn: int,
                         said_at: float, *, quiet_s: float = 0.7,
                         timeout: float = 90.0) -> int | None:
        """Wait for what the caller would hear as the agent's answer: a turn answering speech
        (or keys) logged after `after_turn` -- a re-prompt does not count, whatever its
        number -- then the agent's audio quiet for `quiet_s`. Polls without blocking the
        event loop, so the caller's RTP keeps flowing. The turn's index, or None on timeout
        or when the call ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not caller.ended.is_set():
            answers = [index for index, kind in self.turns_logged(ref)
                       if index > after_turn and kind in ("speech", "dtmf")]
            if answers:
                await caller.wait_quiet(said_at, quiet_s=quiet_s,
                                        timeout=max(1.0, deadline - time.monotonic()))
                return answers[0]
            await asyncio.sleep(0.05)
        return None

    def call_log(self, ref: str) -> str:
        """agentd's log lines about call `ref` (at debug level: partials, finals, end of
        turn), for failure messages."""
        assert self.agentd is not None
        return "\n".join(line for line in self.agentd.log_text().splitlines()
                         if f"call {ref}" in line)

    def wait_call_finished(self, ref: str, timeout: float) -> bool:
        assert self.agentd is not None
        return self.agentd.wait_log(rf"call {re.escape(ref)} finished", timeout)

    def call_row(self, call_id: str) -> CallRow | None:
        """The call with SIP Call-ID `call_id` from the records store (None if absent)."""
        from agentd.records.store import CallStore

        ref = self.call_ref(call_id)
        if ref is None or not self.records_db.exists():
            return None
        with CallStore(self.records_db, create=False) as store:
            record = store.get(ref)
        if record is None:
            return None
        return CallRow(
            ref=record.ref, outcome=record.outcome, end_reason=record.end_reason,
            transfer_target=record.transfer_target, handoff=record.handoff,
            turns=[{"index": t.index, "speaker": t.speaker, "text": t.text,
                    "interrupted": t.interrupted, **t.latency.as_dict()} for t in record.turns],
            tool_calls=[{"name": c.name, "arguments": c.arguments, "ok": c.ok}
                        for c in record.tool_calls])

    def sql(self, database: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows from one of the example's SQLite files (e.g. 'dental.sqlite')."""
        with sqlite3.connect(self.example_dir / "data" / database) as conn:
            return conn.execute(query, params).fetchall()
