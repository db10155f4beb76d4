"""Config file: the example loads, each kind of mistake names file:line:key, secrets stay hidden."""

from __future__ import annotations

import ipaddress
import os
import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agentd.config import (
    Config,
    ConfigError,
    ConfigIssue,
    HostPort,
    config_reference,
    load_config,
    parse_config,
    render_config_reference,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.yaml"

KNOWN_KEYS = [row.key.rsplit(".", 1)[-1] for row in config_reference()]

MINIMAL = """\
sip:
  registrar: 192.0.2.1:5060
  extension: "1001"
  password: hunter2
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def errors_of(path: Path) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.errors


def only_error(path: Path) -> str:
    errors = errors_of(path)
    assert len(errors) == 1, [str(e) for e in errors]
    return str(errors[0])


# --- the example and defaults -------------------------------------------------------------


def test_example_file_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.sip.registrar == HostPort("127.0.0.1", 5060)
    assert config.media.codecs == ("PCMU", "PCMA")
    assert config.app.dtmf_transfer["*"].startswith("sip:")


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for row in config_reference():
        leaf = row.key.rsplit(".", 1)[-1]
        assert f"{leaf}:" in text, f"{row.key} missing from config.example.yaml"


def test_minimal_file_takes_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    sip = config.sip
    assert sip.transport == "udp"
    assert sip.auth_user == "1001"  # defaults to the extension
    assert sip.domain == "192.0.2.1"  # defaults to the registrar host
    assert sip.trusted_sources == (ipaddress.ip_network("192.0.2.1/32"),)
    assert (sip.local_address, sip.local_port, sip.register_expires, sip.max_calls) == (
        "127.0.0.1",
        5060,
        300,
        4,
    )
    assert sip.session_timer is None
    assert config.media.dtmf_payload_type == 101
    assert config.app.mode == "echo" and config.app.echo_delay_ms == 200
    assert (config.log.level, config.log.format) == ("info", "text")


def test_registrar_host_name_leaves_trusted_sources_to_resolution() -> None:
    config = Config.from_dict({"sip": {"registrar": "kamailio", "extension": "7", "password": "x"}})
    assert config.sip.registrar == HostPort("kamailio", 5060)
    assert config.sip.domain == "kamailio"
    assert config.sip.trusted_sources is None


def test_ipv6_registrar_and_explicit_values() -> None:
    config = Config.from_dict(
        {
            "sip": {
                "registrar": "[2001:db8::1]:5080",
                "extension": 1001,
                "password": "x",
                "trusted_sources": ["10.0.0.0/8", "2001:db8::/32"],
                "auth_user": "auth1001",
                "transport": "tcp",
            },
            "media": {"codecs": ["pcma"]},
            "log": {"level": "DEBUG"},
        }
    )
    assert str(config.sip.registrar) == "[2001:db8::1]:5080"
    assert config.sip.extension == "1001"
    assert config.sip.auth_user == "auth1001"
    assert len(config.sip.trusted_sources or ()) == 2
    assert config.media.codecs == ("PCMA",)
    assert config.log.level == "debug"


def test_leading_zero_extension_stays_text(tmp_path: Path) -> None:
    # YAML 1.1 would read 0123 as octal 83.
    path = write(tmp_path, MINIMAL.replace('"1001"', "0123"))
    assert load_config(path).sip.extension == "0123"


def test_unquoted_dtmf_digit_key_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "app:\n  dtmf_transfer:\n    5: 200\n    '#': sip:op@pbx\n")
    assert load_config(path).app.dtmf_transfer == {"5": "200", "#": "sip:op@pbx"}


def test_config_is_immutable(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(ValidationError):
        config.sip.max_calls = 9  # type: ignore[misc]


# --- errors name file, line and key -------------------------------------------------------


def test_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "  max_calls: many\n")
    assert only_error(path) == f"{path}:5: sip.max_calls: expected an integer, got 'many'"


def test_bad_host_port_matches_documented_format(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("192.0.2.1:5060", "kamailio:abc"))
    assert only_error(path) == f"{path}:2: sip.registrar: expected host:port, got 'kamailio:abc'"


def test_missing_required_key_points_at_its_section(tmp_path: Path) -> None:
    path = write(tmp_path, "# header\nsip:\n  registrar: pbx\n  password: x\n")
    assert only_error(path) == f"{path}:2: sip.extension: required key missing"


def test_missing_required_section(tmp_path: Path) -> None:
    path = write(tmp_path, "log:\n  level: info\n")
    assert only_error(path) == f"{path}: sip: required key missing"


def test_empty_file_reports_missing_sip(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    assert only_error(path) == f"{path}: sip: required key missing"


def test_unknown_key_suggests_close_match(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "  registar: pbx\nlog:\n  levle: debug\n")
    assert [str(e) for e in errors_of(path)] == [
        f"{path}:5: sip.registar: unknown key (did you mean 'registrar'?)",
        f"{path}:7: log.levle: unknown key (did you mean 'level'?)",
    ]


def test_unknown_key_without_close_match_lists_keys(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "log:\n  colour: red\n")
    message = only_error(path)
    assert message.startswith(f"{path}:6: log.colour: unknown key; expected one of: level, format")


def test_unknown_top_level_section(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "meida:\n  codecs: [PCMU]\n")
    assert only_error(path) == f"{path}:5: meida: unknown key (did you mean 'media'?)"


def test_bad_cidr_points_at_list_item(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL + "  trusted_sources:\n    - 10.0.0.0/8\n    - 10.0.0.1/24\n    - banana\n",
    )
    assert [str(e) for e in errors_of(path)] == [
        f"{path}:7: sip.trusted_sources[1]: host bits set in '10.0.0.1/24'; "
        "did you mean '10.0.0.0/24'?",
        f"{path}:8: sip.trusted_sources[2]: expected a CIDR such as 192.0.2.0/24, got 'banana'",
    ]


@pytest.mark.parametrize(
    ("media", "line", "key", "message"),
    [
        (
            "  rtp_port_min: 10001\n",
            6,
            "media.rtp_port_min",
            "expected an even port number, got 10001",
        ),
        (
            "  rtp_port_min: 20000\n  rtp_port_max: 10000\n",
            7,
            "media.rtp_port_max",
            "must be greater than rtp_port_min (20000), got 10000",
        ),
        ("  rtp_port_max: 70000\n", 6, "media.rtp_port_max", "expected at most 65534, got 70000"),
        (
            "  rtp_port_min: 10000\n  rtp_port_max: 10004\n",
            7,
            "media.rtp_port_max",
            "RTP range 10000-10004 holds 2 call(s) but sip.max_calls is 4",
        ),
    ],
)
def test_bad_rtp_port_range(tmp_path: Path, media: str, line: int, key: str, message: str) -> None:
    path = write(tmp_path, MINIMAL + "media:\n" + media)
    assert only_error(path) == f"{path}:{line}: {key}: {message}"


def test_codec_errors(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "media:\n  codecs: [PCMU, G729]\n")
    assert only_error(path) == f"{path}:6: media.codecs[1]: expected 'PCMU' or 'PCMA', got 'G729'"
    path = write(tmp_path, MINIMAL + "media:\n  codecs: [PCMU, pcmu]\n")
    assert only_error(path) == f"{path}:6: media.codecs: codec listed twice: PCMU"
    path = write(tmp_path, MINIMAL + "media:\n  codecs: []\n")
    assert only_error(path) == f"{path}:6: media.codecs: expected at least 1 item(s), got a list"


def test_jitter_bounds(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "media:\n  jitter_min_ms: 100\n  jitter_max_ms: 60\n")
    assert (
        only_error(path)
        == f"{path}:7: media.jitter_max_ms: must be at least jitter_min_ms (100), got 60"
    )
    path = write(tmp_path, MINIMAL + "media:\n  jitter_max_ms: 500\n")
    assert only_error(path) == f"{path}:6: media.jitter_max_ms: expected at most 200, got 500"


def test_password_and_password_file_both(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret\n")
    path = write(tmp_path, MINIMAL + "  password_file: secret\n")
    assert only_error(path) == (
        f"{path}:5: sip.password_file: give either password or password_file, not both"
    )


def test_neither_password_nor_password_file(tmp_path: Path) -> None:
    path = write(tmp_path, "sip:\n  registrar: pbx\n  extension: '1'\n")
    assert only_error(path) == f"{path}:1: sip.password: required: give password or password_file"


def test_password_file_is_read_relative_to_config_and_stripped(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("  s3cret \n")
    path = write(tmp_path, MINIMAL.replace("password: hunter2", "password_file: secret"))
    config = load_config(path)
    assert config.sip.password is not None
    assert config.sip.password.get_secret_value() == "s3cret"
    assert config.sip.password_file == tmp_path / "secret"


def test_missing_password_file_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("password: hunter2", "password_file: nope.secret"))
    assert only_error(path) == (
        f"{path}:4: sip.password_file: cannot read password file "
        f"'{tmp_path / 'nope.secret'}': No such file or directory"
    )


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads anything")
def test_unreadable_password_file_names_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    secret.chmod(0)
    path = write(tmp_path, MINIMAL.replace("password: hunter2", f"password_file: {secret}"))
    assert only_error(path) == (
        f"{path}:4: sip.password_file: cannot read password file '{secret}': Permission denied"
    )


def test_permission_denied_password_file_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulates EACCES so the check also runs as root (CI containers often are).
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    real_read_text = Path.read_text

    def denying_read_text(self: Path, *args: object, **kwargs: object) -> str:
        if self == secret:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    path = write(tmp_path, MINIMAL.replace("password: hunter2", "password_file: secret"))
    monkeypatch.setattr(Path, "read_text", denying_read_text)
    assert only_error(path) == (
        f"{path}:4: sip.password_file: cannot read password file '{secret}': Permission denied"
    )


def test_password_file_that_is_a_directory_names_it(tmp_path: Path) -> None:
    # Works as root too, unlike a chmod 000 file.
    (tmp_path / "secrets").mkdir()
    path = write(tmp_path, MINIMAL.replace("password: hunter2", "password_file: secrets"))
    assert only_error(path) == (
        f"{path}:4: sip.password_file: cannot read password file "
        f"'{tmp_path / 'secrets'}': Is a directory"
    )


def test_empty_password_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("\n \n")
    path = write(tmp_path, MINIMAL.replace("password: hunter2", "password_file: secret"))
    assert "password file" in only_error(path) and "is empty" in only_error(path)


def test_playback_needs_existing_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "app:\n  mode: playback\n")
    assert only_error(path) == f"{path}:5: app.playback_file: required when mode is playback"
    path = write(tmp_path, MINIMAL + "app:\n  mode: playback\n  playback_file: hello.wav\n")
    assert (
        only_error(path)
        == f"{path}:7: app.playback_file: file not found: '{tmp_path / 'hello.wav'}'"
    )
    (tmp_path / "hello.wav").write_bytes(b"RIFF")
    assert load_config(path).app.playback_file == tmp_path / "hello.wav"


def test_bad_dtmf_map(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "app:\n  dtmf_transfer:\n    x: '100'\n    '#': has space\n")
    assert [str(e) for e in errors_of(path)] == [
        f"{path}:7: app.dtmf_transfer.x: invalid key: expected '0', '1', '2', '3', '4', '5', "
        "'6', '7', '8', '9', '*' or '#', got 'x'",
        f"{path}:8: app.dtmf_transfer.#: expected an extension number or sip:/sips: URI, "
        "got 'has space'",
    ]


@pytest.mark.parametrize(
    ("line_text", "message"),
    [
        ("local_address: 0.0.0.0", "'0.0.0.0' cannot be advertised to the PBX"),
        ("local_address: pbx", "expected an IP address, got 'pbx'"),
        ("local_port: true", "expected a number, got True"),
        ("transport: tls", "expected 'udp' or 'tcp', got 'tls'"),
        ("register_expires: 10", "expected at least 30, got 10"),
        ('user_agent: "a\\r\\nX-Evil: 1"', "expected one line of at most 256 printable characters"),
        ("rate_limit: 5", "expected a mapping of keys, got 5"),
    ],
)
def test_sip_value_errors(tmp_path: Path, line_text: str, message: str) -> None:
    path = write(tmp_path, MINIMAL + f"  {line_text}\n")
    error = only_error(path)
    assert error.startswith(f"{path}:5: sip.{line_text.split(':')[0]}: {message}"), error


def test_several_errors_reported_together_in_line_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        log:
          level: loud
        sip:
          registrar: "kamailio:abc"
          extension: "1001"
          password: x
          max_calls: 0
        media:
          dtmf_payload_type: 90
        """,
    )
    errors = errors_of(path)
    assert [(e.line, e.key) for e in errors] == [
        (2, "log.level"),
        (4, "sip.registrar"),
        (7, "sip.max_calls"),
        (9, "media.dtmf_payload_type"),
    ]
    assert all(e.file == str(path) for e in errors)
    assert str(ConfigError(errors)).count("\n") == 3


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "sip:\n  registrar: [pbx\n  extension: 1\n")
    message = only_error(path)
    assert message.startswith(f"{path}:3: YAML syntax error: ")
    assert "line 2" in message


def test_yaml_bad_indentation(tmp_path: Path) -> None:
    path = write(tmp_path, "sip:\n  registrar: pbx\n extension: 1\n")
    assert only_error(path).startswith(f"{path}:3: YAML syntax error: ")


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "  extension: '1002'\n")
    assert only_error(path) == f"{path}:5: sip.extension: duplicate key (first given on line 3)"


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- sip\n")
    assert only_error(path).startswith(f"{path}: expected a mapping of keys")


def test_unreadable_config_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    assert only_error(path) == f"{path}: cannot read: No such file or directory"


def test_from_dict_has_source_and_no_line() -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_dict({"sip": {"registrar": "pbx", "extension": "1"}}, source="unit")
    assert str(caught.value) == "unit: sip.password: required: give password or password_file"


def test_parse_config_default_source() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("sip: 3\n")
    assert str(caught.value) == "<string>:1: sip: expected a mapping of keys, got 3"


# --- secrets -------------------------------------------------------------------------------


def test_password_never_in_repr_str_or_dump(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    for text in (
        repr(config),
        str(config),
        repr(config.sip),
        config.model_dump_json(),
        str(config.model_dump()),
    ):
        assert "hunter2" not in text
    assert config.sip.password is not None and config.sip.password.get_secret_value() == "hunter2"


def test_password_from_file_never_in_repr(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("file-secret-42")
    config = load_config(
        write(tmp_path, MINIMAL.replace("password: hunter2", "password_file: secret"))
    )
    assert "file-secret-42" not in repr(config)


def test_bad_password_value_not_echoed_in_errors(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("password: hunter2", "password: [hunter2]"))
    message = only_error(path)
    assert message == f"{path}:4: sip.password: expected text"
    assert "hunter2" not in message


def test_numeric_password_kept_as_text(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL.replace("password: hunter2", "password: 123456")))
    assert config.sip.password is not None and config.sip.password.get_secret_value() == "123456"


def test_config_error_is_not_chained_to_pydantic(tmp_path: Path) -> None:
    # A chained pydantic ValidationError would print the raw input (passwords) in tracebacks.
    path = write(tmp_path, MINIMAL + "  max_calls: many\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.__cause__ is None and caught.value.__context__ is None


# --- reference table -----------------------------------------------------------------------


def test_reference_lists_every_key_with_type_and_default() -> None:
    rows = {row.key: row for row in config_reference()}
    assert rows["sip.registrar"].type == "host:port" and rows["sip.registrar"].default == "required"
    assert (
        rows["sip.local_port"].type == "int 0..65535" and rows["sip.local_port"].default == "5060"
    )
    assert rows["sip.auth_user"].default == "= extension"
    assert rows["media.codecs"].default == "[PCMU, PCMA]"
    assert rows["sip.rate_limit.burst"].default == "20"
    assert rows["log.format"].type == "text | json"
    assert all(row.description for row in rows.values())
    # every leaf field of every section appears
    assert {"sip", "media", "app", "log"} <= rows.keys()
    assert "app.dtmf_transfer" in rows and "media.jitter_max_ms" in rows


def test_render_reference_is_a_markdown_table() -> None:
    table = render_config_reference()
    lines = table.strip().splitlines()
    assert lines[0] == "| Key | Type | Default | Description |"
    assert len(lines) == len(config_reference()) + 2
    for line in lines:
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        assert len(cells) == 4, line
    assert "`sip.registrar`" in table


# --- hostile input -------------------------------------------------------------------------


def test_alias_cycle_and_alias_bomb_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"<string>:1: YAML alias refers to itself"):
        parse_config("sip: &s\n  x: *s\n")
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for name, prev in zip("bcdef", "abcde", strict=True):
        bomb += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]\n"
    with pytest.raises(ConfigError, match="YAML expands to over"):
        parse_config(bomb)


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_config("[" * 5000 + "]" * 5000)


def test_python_tags_are_not_constructed() -> None:
    with pytest.raises(ConfigError, match="could not determine a constructor"):
        parse_config("sip: !!python/object/apply:os.system [echo]\n")


yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12)
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(data=yaml_values)
def test_arbitrary_data_only_raises_config_error(data: object) -> None:
    try:
        Config.from_dict(data)
    except ConfigError as exc:
        assert exc.errors and all(isinstance(issue, ConfigIssue) for issue in exc.errors)


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("sip:med\n -[]{}&*!#'\"0123.,?|>")), max_size=60))
def test_arbitrary_text_only_raises_config_error(text: str) -> None:
    try:
        parse_config(text)
    except ConfigError as exc:
        assert str(exc)
