"""The `call:` section: defaults match the call loop's, mistakes name file:line:key, and
`agentd.call.app.loop_config` carries every value into CallLoopConfig/TurnConfig."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from agentd.call.app import loop_config
from agentd.call.loop import CallLoopConfig
from agentd.call.turns import (
    DEFAULT_BACKCHANNELS,
    TurnConfig,
    TurnTaker,
    is_backchannel,
)
from agentd.config import ConfigError, load_config
from agentd.config.schema import CallConfig

MINIMAL = """\
sip:
  registrar: 192.0.2.1:5060
  extension: "1001"
  password: hunter2
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agentd.yaml"
    path.write_text(MINIMAL + textwrap.dedent(text), encoding="utf-8")
    return path


def only_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    errors = caught.value.errors
    assert len(errors) == 1, [str(e) for e in errors]
    return str(errors[0])


def test_defaults_are_the_call_loops_defaults() -> None:
    section, loop, turns = CallConfig(), CallLoopConfig(), TurnConfig()
    assert section.fillers == loop.fillers
    assert section.acknowledgements == loop.acknowledgements
    for name in ("filler_after_s", "tool_filler_after_s", "max_fillers_per_turn", "dtmf_gap_s",
                 "preroll_s", "reprompt_after_s", "ack_when_content_after_s",
                 "filler_after_ack_s", "prefill"):
        assert getattr(section, name) == getattr(loop, name), name
    for name in ("fast_end_of_turn_s", "incomplete_hold_s", "backchannel_max_s", "hold_max_s"):
        assert getattr(section, name) == getattr(turns, name), name
    assert frozenset(section.backchannels) == DEFAULT_BACKCHANNELS


def test_without_a_call_section_the_loop_gets_its_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    built = loop_config(config)
    expected = CallLoopConfig(vad=built.vad, turns=TurnConfig())
    assert built == expected
    assert built.vad is not None and built.vad.end_of_turn_ms == 400


def test_every_value_reaches_the_call_loop(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """\
        speech:
          vad:
            threshold: 0.6
            neg_threshold: 0.4
            end_of_turn_ms: 700
        call:
          fillers: ["Just a second.", "Checking.", "Nearly there."]
          filler_after_s: 1.4
          tool_filler_after_s: 0
          max_fillers_per_turn: 3
          acknowledgements: ["Right."]
          ack_when_content_after_s: null
          filler_after_ack_s: 1.2
          prefill: false
          dtmf_gap_s: 2.5
          preroll_s: 0.5
          reprompt_after_s: 12
          fast_end_of_turn_s: null
          incomplete_hold_s: 0.9
          backchannel_max_s: 1.1
          hold_max_s: 2
          backchannels: [gotcha, "Sure."]
        """))
    built = loop_config(config)
    assert built.fillers == ("Just a second.", "Checking.", "Nearly there.")
    assert (built.filler_after_s, built.tool_filler_after_s, built.max_fillers_per_turn) == (
        1.4, 0.0, 3)
    assert (built.dtmf_gap_s, built.preroll_s, built.reprompt_after_s) == (2.5, 0.5, 12.0)
    assert built.acknowledgements == ("Right.",) and built.ack_when_content_after_s is None
    assert built.filler_after_ack_s == 1.2 and built.prefill is False
    assert built.turns == TurnConfig(
        threshold=0.6, neg_threshold=0.4, end_of_turn_s=0.7, fast_end_of_turn_s=None,
        incomplete_hold_s=0.9, backchannel_max_s=1.1, hold_max_s=2.0,
        backchannels=frozenset({"gotcha", "Sure."}))
    # The turn logic uses the operator's words: "sure" is a backchannel now, "okay" is not.
    taker = TurnTaker(built.turns)
    vocabulary = taker.config.backchannels
    assert is_backchannel("Sure.", vocabulary) and is_backchannel("Gotcha, sure", vocabulary)
    assert not is_backchannel("Okay.", vocabulary)


def test_empty_filler_list_turns_fillers_off(tmp_path: Path) -> None:
    built = loop_config(load_config(write(tmp_path, "call:\n  fillers: []\n")))
    assert built.fillers == ()


@pytest.mark.parametrize(("body", "line", "key", "message"), [
    ("call:\n  hold_max_s: -1\n", 6, "call.hold_max_s", "expected more than 0.0, got -1"),
    ("call:\n  filler_after_s: 1.0\n  dtmf_gap_s: soon\n", 7, "call.dtmf_gap_s",
     "expected a number, got 'soon'"),
    ("call:\n  max_fillers_per_turn: 2.5\n", 6, "call.max_fillers_per_turn",
     "expected an integer"),
    ("call:\n  preroll_s: 3\n", 6, "call.preroll_s", "expected at most 1.0, got 3"),
    ("call:\n  reprompt_after_s: 0\n", 6, "call.reprompt_after_s", "expected more than 0"),
    ("call:\n  fast_end_of_turn_s: true\n", 6, "call.fast_end_of_turn_s", "expected a number"),
    ("call:\n  fillers: [\"One moment.\", \"...\"]\n", 6, "call.fillers",
     "expected a phrase with words, got '...'"),
    ("call:\n  backchannels: [yeah, okay, yeah]\n", 6, "call.backchannels",
     "listed twice: 'yeah'"),
    ("call:\n  fillers: \"One moment.\"\n", 6, "call.fillers", "expected a list"),
    ("call:\n  filler_after_ms: 900\n", 6, "call.filler_after_ms",
     "unknown key (did you mean 'filler_after_s'?)"),
])
def test_bad_value_names_file_line_and_key(tmp_path: Path, body: str, line: int, key: str,
                                           message: str) -> None:
    path = write(tmp_path, body)
    error = only_error(path)
    assert error.startswith(f"{path}:{line}: {key}: "), error
    assert message in error


def test_section_is_immutable() -> None:
    section = CallConfig()
    with pytest.raises(ValidationError):
        section.hold_max_s = 3.0  # type: ignore[misc]


def test_example_file_lists_the_defaults() -> None:
    example = Path(__file__).resolve().parents[2] / "config.example.yaml"
    assert load_config(example).call == CallConfig()
