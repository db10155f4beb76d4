"""Policy file: a valid policy loads with its defaults; each kind of mistake names
file:line:key; secrets never show; opening hours follow the business time zone."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from agentd.config import ConfigError, load_config
from agentd.dialog.policy import (
    Policy,
    TemplateText,
    load_policy,
    parse_template,
)
from agentd.dialog.types import ToolError

BASE = """\
agent:
  name: Ava
  organisation: Bright Smile Dental
  greeting: "Hello, this is Ava."
  goodbye: "Goodbye!"
  timezone: Europe/London
tools:
  verify_identity:
    builtin: identity.verify
    records: data/patients.csv
  find_slots:
    builtin: calendar.find_slots
    database: data/cal.sqlite
  move_appointment:
    builtin: calendar.move
    database: data/cal.sqlite
    confirm: true
    requires: [verify_identity]
  send_confirmation:
    webhook:
      url: "https://crm.example/api/appointments/{appointment_id}/confirm"
      headers: {Authorization: "Bearer ${env:TEST_CRM_TOKEN}"}
      body: {appointment_id: "{appointment_id}", caller: "{caller_id}"}
    description: Send the caller a confirmation text.
    parameters:
      type: object
      properties: {appointment_id: {type: string}}
      required: [appointment_id]
flows:
  reschedule:
    goal: Move an appointment.
    steps:
      - Verify the caller.
escalation:
  targets:
    front_desk: "100"
    billing: {uri: "sip:billing@pbx.example", label: our billing team}
  rules:
    - when: caller_asks_for_human
      target: front_desk
    - when: topic
      topics: [insurance]
      target: billing
    - when: misunderstanding
      target: front_desk
    - when: outside_hours
      target: null
      say: "We're closed."
hours:
  monday: "08:00-18:00"
  saturday: "09:00-12:00, 13:00-17:00"
dtmf:
  0: {transfer: front_desk}
"""

SECRET = "s3cr3t-token-value"


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_CRM_TOKEN", SECRET)


def write_policy(tmp_path: Path, text: str = BASE, name: str = "policy.yaml") -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "patients.csv").write_text("patient_id,name\n", encoding="utf-8")
    (tmp_path / "data" / "cal.sqlite").write_bytes(b"")
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def edit(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    seen = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} not in text")


def only_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    errors = caught.value.errors
    assert len(errors) == 1, [str(e) for e in errors]
    return str(errors[0])


# --- a valid policy --------------------------------------------------------------------------


def test_valid_policy_loads_with_defaults(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path))
    assert policy.source == (tmp_path / "policy.yaml").resolve()
    assert policy.agent.persona  # defaulted
    assert policy.agent.date_order == "dmy"
    assert policy.limits.max_turns == 30 and policy.limits.reprompt
    assert policy.tools["find_slots"].database == (tmp_path / "data" / "cal.sqlite")
    assert policy.tools["find_slots"].kind == "builtin"
    assert policy.tools["find_slots"].description_text  # builtin's default description
    assert policy.tools["send_confirmation"].kind == "webhook"
    assert policy.tools["send_confirmation"].argument_names == ("appointment_id",)
    assert policy.tools["verify_identity"].identity_match == ("name", "date_of_birth")
    assert policy.rules_for("misunderstanding")[0].count == 2  # default streak
    assert policy.rules_for("topic")[0].count is None
    assert policy.dtmf_action("0") is not None and policy.dtmf_action("0").transfer == "front_desk"
    assert policy.dtmf_action("5") is None
    assert policy.flows["reschedule"].steps == ("Verify the caller.",)
    assert set(policy.data_files()) == {
        tmp_path / "data" / "patients.csv",
        tmp_path / "data" / "cal.sqlite",
    }


def test_targets_uris_labels_and_handoff_line(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path))
    assert policy.target_names == ("front_desk", "billing")
    assert policy.target_uri("front_desk") == "100"
    assert policy.target_uri("billing") == "sip:billing@pbx.example"
    assert policy.target_label("front_desk") == "front desk"
    assert policy.handoff_text("billing") == "Let me put you through to our billing team now."
    with pytest.raises(KeyError):
        policy.target_uri("nobody")


# --- each kind of mistake names file:line:key ------------------------------------------------


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    text = edit(
        "    database: data/cal.sqlite\n    confirm", "    databse: data/cal.sqlite\n    confirm"
    )
    path = write_policy(tmp_path, text)
    assert only_error(path) == (
        f"{path}:{line_of(text, 'databse')}: tools.move_appointment.databse: "
        "unknown key (did you mean 'database'?)"
    )


def test_unknown_top_level_section(tmp_path: Path) -> None:
    text = BASE + "escalations: {}\n"
    path = write_policy(tmp_path, text)
    assert only_error(path) == (
        f"{path}:{line_of(text, 'escalations:')}: escalations: "
        "unknown key (did you mean 'escalation'?)"
    )


def test_rule_target_must_be_declared(tmp_path: Path) -> None:
    text = edit(
        "      topics: [insurance]\n      target: billing",
        "      topics: [insurance]\n      target: bililng",
    )
    path = write_policy(tmp_path, text)
    message = only_error(path)
    assert message.startswith(
        f"{path}:{line_of(text, 'target: bililng')}: escalation.rules[1].target: "
        "unknown transfer target 'bililng' (did you mean 'billing'?)"
    )
    assert "billing, front_desk" in message


def test_null_target_needs_a_say_line(tmp_path: Path) -> None:
    text = edit('      target: null\n      say: "We\'re closed."\n', "      target: null\n")
    path = write_policy(tmp_path, text)
    assert only_error(path) == (
        f"{path}:{line_of(text, 'when: outside_hours')}: escalation.rules[3].say: "
        "required when target is null (said before the call ends)"
    )


def test_dtmf_transfer_target_must_be_declared(tmp_path: Path) -> None:
    text = edit("0: {transfer: front_desk}", "0: {transfer: reception}")
    path = write_policy(tmp_path, text)
    assert only_error(path).startswith(
        f"{path}:{line_of(text, 'transfer: reception')}: dtmf.0.transfer: "
        "unknown transfer target 'reception'"
    )


def test_requires_must_name_declared_tools(tmp_path: Path) -> None:
    text = edit("requires: [verify_identity]", "requires: [verify_identiy]")
    path = write_policy(tmp_path, text)
    assert only_error(path).startswith(
        f"{path}:{line_of(text, 'requires:')}: tools.move_appointment.requires: "
        "unknown tool 'verify_identiy' (did you mean 'verify_identity'?)"
    )


def test_requires_loop_is_refused(tmp_path: Path) -> None:
    text = edit(
        "    builtin: identity.verify\n",
        "    builtin: identity.verify\n    requires: [move_appointment]\n",
    )
    path = write_policy(tmp_path, text)
    message = only_error(path)
    assert "requires form a loop" in message and "no tool in it could run" in message
    assert message.startswith(f"{path}:")


def test_builtin_typo(tmp_path: Path) -> None:
    text = edit("builtin: calendar.find_slots", "builtin: calendar.find_slot")
    path = write_policy(tmp_path, text)
    message = only_error(path)
    assert message.startswith(
        f"{path}:{line_of(text, 'calendar.find_slot')}: tools.find_slots.builtin: "
        "unknown builtin 'calendar.find_slot' (did you mean 'calendar.find_slots'?)"
    )
    assert "identity.verify" in message  # the full list of builtins


def test_builtin_option_of_another_builtin(tmp_path: Path) -> None:
    text = edit(
        "    database: data/cal.sqlite\n    confirm",
        "    database: data/cal.sqlite\n    records: data/patients.csv\n    confirm",
    )
    path = write_policy(tmp_path, text)
    assert only_error(path).startswith(
        f"{path}:{line_of(text, 'records: data/patients.csv', 2)}: tools.move_appointment.records: "
        "not an option of calendar.move"
    )


def test_missing_data_file(tmp_path: Path) -> None:
    text = edit("records: data/patients.csv", "records: data/nobody.csv")
    path = write_policy(tmp_path, text)
    assert only_error(path) == (
        f"{path}:{line_of(text, 'nobody.csv')}: tools.verify_identity.records: "
        f"file not found: '{tmp_path / 'data' / 'nobody.csv'}'"
    )


def test_tool_has_exactly_one_of_builtin_and_webhook(tmp_path: Path) -> None:
    text = edit(
        "  find_slots:\n    builtin: calendar.find_slots\n",
        "  find_slots:\n    builtin: calendar.find_slots\n    webhook: {url: 'https://x.example/'}\n",
    )
    path = write_policy(tmp_path, text)
    assert only_error(path) == (
        f"{path}:{line_of(text, 'webhook: {url')}: tools.find_slots.webhook: "
        "give either builtin or webhook, not both"
    )
    neither = edit("    builtin: calendar.find_slots\n", "    description: Finds slots.\n")
    path = write_policy(tmp_path, neither)
    assert only_error(path).endswith("tools.find_slots.builtin: required: give builtin or webhook")


@pytest.mark.parametrize(
    ("hours", "expected"),
    [
        ("8am-6pm", "expected HH:MM-HH:MM (or closed), got '8am-6pm'"),
        ("18:00-08:00", "ends before it starts"),
        ("08:00-25:00", "no such time in '08:00-25:00'"),
        ("08:00-12:00, 11:00-14:00", "overlapping ranges"),
    ],
)
def test_bad_hours(tmp_path: Path, hours: str, expected: str) -> None:
    text = edit('monday: "08:00-18:00"', f'monday: "{hours}"')
    path = write_policy(tmp_path, text)
    message = only_error(path)
    assert message.startswith(f"{path}:{line_of(text, 'monday:')}: hours.monday: ")
    assert expected in message


def test_misspelt_weekday(tmp_path: Path) -> None:
    text = edit('monday: "08:00-18:00"', 'monady: "08:00-18:00"')
    path = write_policy(tmp_path, text)
    assert only_error(path) == (
        f"{path}:{line_of(text, 'monady')}: hours.monady: unknown key (did you mean 'monday'?)"
    )


def test_bad_timezone(tmp_path: Path) -> None:
    text = edit("timezone: Europe/London", "timezone: Europe/Londn")
    path = write_policy(tmp_path, text)
    assert only_error(path) == (
        f"{path}:{line_of(text, 'timezone')}: agent.timezone: "
        "unknown time zone 'Europe/Londn' (did you mean 'Europe/London'?)"
    )


def test_empty_greeting(tmp_path: Path) -> None:
    text = edit('greeting: "Hello, this is Ava."', 'greeting: "  "')
    path = write_policy(tmp_path, text)
    assert (
        only_error(path) == f"{path}:{line_of(text, 'greeting')}: agent.greeting: must not be empty"
    )


def test_flow_without_steps(tmp_path: Path) -> None:
    text = edit("    steps:\n      - Verify the caller.\n", "    steps: []\n")
    path = write_policy(tmp_path, text)
    assert only_error(path) == (
        f"{path}:{line_of(text, 'steps: []')}: flows.reschedule.steps: "
        "a flow needs at least one step"
    )


def test_missing_env_secret_names_the_key_not_a_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_CRM_TOKEN")
    path = write_policy(tmp_path)
    assert only_error(path) == (
        f"{path}:{line_of(BASE, 'Authorization')}: "
        "tools.send_confirmation.webhook.headers.Authorization: "
        "environment variable TEST_CRM_TOKEN is not set (${env:TEST_CRM_TOKEN})"
    )


def test_bad_template_field(tmp_path: Path) -> None:
    text = edit("{appointment_id}/confirm", "{apointment_id}/confirm")
    path = write_policy(tmp_path, text)
    message = only_error(path)
    assert message.startswith(
        f"{path}:{line_of(text, 'url:')}: tools.send_confirmation.webhook.url: "
        "unknown template field {apointment_id} (did you mean 'appointment_id'?)"
    )
    assert "{call_ref}" in message and "{caller_id}" in message


def test_bad_template_field_in_body_points_at_its_key(tmp_path: Path) -> None:
    text = edit('caller: "{caller_id}"', 'caller: "{caller}"')
    path = write_policy(tmp_path, text)
    assert only_error(path).startswith(
        f"{path}:{line_of(text, 'body:')}: tools.send_confirmation.webhook.body.caller: "
        "unknown template field {caller}"
    )


def test_webhook_url_must_be_http(tmp_path: Path) -> None:
    text = edit("https://crm.example/api", "ftp://crm.example/api")
    path = write_policy(tmp_path, text)
    assert only_error(path).startswith(
        f"{path}:{line_of(text, 'url:')}: tools.send_confirmation.webhook.url: "
        "expected an http:// or https:// URL"
    )


def test_webhook_needs_a_description(tmp_path: Path) -> None:
    text = edit("    description: Send the caller a confirmation text.\n", "")
    path = write_policy(tmp_path, text)
    assert only_error(path).endswith(
        "tools.send_confirmation.description: required for a webhook tool (the model reads it)"
    )


def test_topic_rule_needs_topics(tmp_path: Path) -> None:
    text = edit("      topics: [insurance]\n", "")
    path = write_policy(tmp_path, text)
    assert only_error(path) == (
        f"{path}:{line_of(text, 'when: topic')}: escalation.rules[1].topics: "
        "a topic rule needs a non-empty topics list"
    )


def test_outside_hours_rule_needs_hours(tmp_path: Path) -> None:
    text = BASE[: BASE.index("hours:\n")] + "dtmf: {}\n"
    path = write_policy(tmp_path, text)
    assert only_error(path) == (
        f"{path}:{line_of(text, 'when: outside_hours')}: escalation.rules[3].when: "
        "outside_hours needs an hours: section"
    )


def test_several_errors_reported_together(tmp_path: Path) -> None:
    text = edit("timezone: Europe/London", "timezone: Mars/Olympus")
    text = edit('monday: "08:00-18:00"', 'monday: "late"', text)
    with pytest.raises(ConfigError) as caught:
        load_policy(write_policy(tmp_path, text))
    keys = [issue.key for issue in caught.value.errors]
    assert keys == ["agent.timezone", "hours.monday"]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write_policy(tmp_path, BASE + "limits: [unclosed\n")
    message = only_error(path)
    assert message.startswith(f"{path}:") and "YAML syntax error" in message


def test_unreadable_policy_file(tmp_path: Path) -> None:
    assert only_error(tmp_path / "nope.yaml").startswith(f"{tmp_path / 'nope.yaml'}: cannot read")


# --- secrets ---------------------------------------------------------------------------------


def test_secrets_never_in_repr_str_or_dump(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path))
    webhook = policy.tools["send_confirmation"].webhook
    assert webhook is not None
    for shown in (repr(policy), str(policy), repr(webhook), str(policy.model_dump())):
        assert SECRET not in shown
    assert "${env:TEST_CRM_TOKEN}" in repr(webhook)  # the reference is shown, not the value
    values = {"appointment_id": "A 17/3", "caller_id": "+447700900102", "call_ref": "c1"}
    assert webhook.render_headers(values) == {"Authorization": f"Bearer {SECRET}"}
    assert webhook.render_url(values) == (
        "https://crm.example/api/appointments/A%2017%2F3/confirm"  # values URL-encoded
    )


def test_file_secret_relative_to_the_policy(tmp_path: Path) -> None:
    (tmp_path / "token.txt").write_text("file-secret\n", encoding="utf-8")
    text = edit("${env:TEST_CRM_TOKEN}", "${file:token.txt}")
    policy = load_policy(write_policy(tmp_path, text))
    webhook = policy.tools["send_confirmation"].webhook
    assert webhook is not None
    assert webhook.render_headers({})["Authorization"] == "Bearer file-secret"
    assert "file-secret" not in repr(policy)
    missing = edit("${env:TEST_CRM_TOKEN}", "${file:missing.txt}")
    message = only_error(write_policy(tmp_path, missing))
    assert "cannot read secret file" in message and "headers.Authorization" in message


def test_templates_render_and_refuse_missing_values() -> None:
    template = parse_template("{{literal}} {name}-{n}")
    assert template.fields == frozenset({"name", "n"})
    assert template.render({"name": "Ann Lee", "n": 3}) == "{literal} Ann Lee-3"
    with pytest.raises(ToolError, match="missing value for {n}"):
        template.render({"name": "x"})
    with pytest.raises(ValueError, match="unbalanced"):
        parse_template("oops {")
    with pytest.raises(ValueError, match=r"expected \$\{env:NAME\}"):
        parse_template("${vault:x}")
    assert isinstance(template, TemplateText) and str(template) == "{{literal}} {name}-{n}"


def test_body_keeps_json_types_and_headers_refuse_line_breaks(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path))
    webhook = policy.tools["send_confirmation"].webhook
    assert webhook is not None
    body = webhook.render_body({"appointment_id": 42, "caller_id": None, "call_ref": "c"})
    assert body == {"appointment_id": 42, "caller": None}
    crlf = parse_template("x {v}")
    spec = webhook.model_copy(update={"headers": {"X-Caller": crlf}})
    with pytest.raises(ToolError, match="control character"):
        spec.render_headers({"v": "a\r\nX-Evil: 1"})


# --- built without a file --------------------------------------------------------------------


def test_model_validate_without_context_still_checks_names(tmp_path: Path) -> None:
    import yaml

    data = yaml.safe_load(edit("target: billing", "target: nobody"))
    data["tools"] = {}
    with pytest.raises(Exception, match="unknown transfer target 'nobody'"):
        Policy.model_validate(data)


# --- opening hours ---------------------------------------------------------------------------


def test_is_open_in_the_business_time_zone(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path))  # Europe/London, Monday 08:00-18:00
    # Summer (BST = UTC+1): Monday 2025-07-07.
    assert policy.is_open(datetime(2025, 7, 7, 7, 30, tzinfo=UTC))  # 08:30 local
    assert not policy.is_open(datetime(2025, 7, 7, 6, 59, tzinfo=UTC))  # 07:59 local
    assert not policy.is_open(datetime(2025, 7, 7, 17, 0, tzinfo=UTC))  # 18:00 local: closed
    assert policy.is_open(datetime(2025, 7, 7, 16, 59, 59, tzinfo=UTC))  # 17:59:59 local
    # Winter (GMT): the same UTC time is the same local time.
    assert policy.is_open(datetime(2025, 1, 6, 17, 30, tzinfo=UTC))
    # Another offset: Monday 09:00 in New York is 14:00 in London.
    new_york = timezone(timedelta(hours=-5))
    assert policy.is_open(datetime(2025, 1, 6, 9, 0, tzinfo=new_york))
    assert not policy.is_open(datetime(2025, 1, 6, 14, 0, tzinfo=new_york))  # 19:00 London


def test_is_open_across_days(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path))
    # Sunday 23:30 UTC in winter is Sunday in London (closed: no sunday key) ...
    assert not policy.is_open(datetime(2025, 1, 5, 23, 30, tzinfo=UTC))
    # ... but Monday 08:30 in Tokyo is Sunday 23:30 in London: still closed.
    tokyo = timezone(timedelta(hours=9))
    assert not policy.is_open(datetime(2025, 1, 6, 8, 30, tzinfo=tokyo))
    # Saturday has two ranges with a lunch break; Tuesday is not listed (closed).
    assert policy.is_open(datetime(2025, 1, 4, 11, 59, tzinfo=UTC))
    assert not policy.is_open(datetime(2025, 1, 4, 12, 30, tzinfo=UTC))
    assert policy.is_open(datetime(2025, 1, 4, 13, 0, tzinfo=UTC))
    assert not policy.is_open(datetime(2025, 1, 7, 10, 0, tzinfo=UTC))
    with pytest.raises(ValueError, match="timezone-aware"):
        policy.is_open(datetime(2025, 1, 6, 10, 0))
    assert "monday: 08:00-18:00" in policy.hours_summary()
    assert "tuesday: closed" in policy.hours_summary()


def test_no_hours_means_always_open(tmp_path: Path) -> None:
    text = BASE[: BASE.index("    - when: outside_hours")] + "dtmf: {}\n"
    policy = load_policy(write_policy(tmp_path, text))
    assert policy.is_open(datetime(2025, 1, 5, 3, 0, tzinfo=UTC))


def test_hours_end_at_midnight(tmp_path: Path) -> None:
    text = edit('monday: "08:00-18:00"', 'monday: "20:00-24:00"')
    policy = load_policy(write_policy(tmp_path, text))
    assert policy.is_open(datetime(2025, 1, 6, 23, 59, tzinfo=UTC))
    assert not policy.is_open(datetime(2025, 1, 7, 0, 0, tzinfo=UTC))


# --- the dialog: section of config.yaml ------------------------------------------------------

SIP = """\
sip:
  registrar: 127.0.0.1:5060
  extension: "2001"
  password: pw2001
"""


def write_config(tmp_path: Path, dialog: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(SIP + textwrap.dedent(dialog), encoding="utf-8")
    return path


def test_config_with_policy_file(tmp_path: Path) -> None:
    write_policy(tmp_path)
    config = load_config(write_config(tmp_path, "dialog:\n  policy_file: policy.yaml\n"))
    assert config.dialog.enabled
    assert config.dialog.policy is not None
    assert config.dialog.policy.target_uri("front_desk") == "100"
    assert config.dialog.llm.backend == "llama" and config.dialog.llm.temperature == 0.0


def test_config_without_dialog_runs_the_line_test(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, ""))
    assert not config.dialog.enabled


def test_missing_policy_file_names_the_config_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, "dialog:\n  policy_file: nowhere.yaml\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [str(e) for e in caught.value.errors] == [
        f"{path}:6: dialog.policy_file: file not found: '{tmp_path / 'nowhere.yaml'}'"
    ]


def test_error_in_policy_file_names_that_file_and_line(tmp_path: Path) -> None:
    text = edit("timezone: Europe/London", "timezone: Europe/Londn")
    policy_path = write_policy(tmp_path, text, name="dental.yaml")
    path = write_config(tmp_path, "dialog:\n  policy_file: dental.yaml\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [str(e) for e in caught.value.errors] == [
        f"{policy_path}:{line_of(text, 'timezone')}: agent.timezone: "
        "unknown time zone 'Europe/Londn' (did you mean 'Europe/London'?)"
    ]


def test_inline_policy_errors_name_config_lines(tmp_path: Path) -> None:
    write_policy(tmp_path)  # data files
    inline = textwrap.indent(edit("target: billing", "target: nobody"), "    ")
    path = write_config(tmp_path, "dialog:\n  policy:\n" + inline)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (issue,) = caught.value.errors
    assert issue.file == str(path)
    assert issue.key == "dialog.policy.escalation.rules[1].target"
    assert issue.line == 6 + line_of(BASE, "target: billing")


def test_inline_policy_paths_resolve_against_the_config(tmp_path: Path) -> None:
    write_policy(tmp_path)
    path = write_config(tmp_path, "dialog:\n  policy:\n" + textwrap.indent(BASE, "    "))
    config = load_config(path)
    assert config.dialog.policy is not None
    assert config.dialog.policy.tools["find_slots"].database == tmp_path / "data" / "cal.sqlite"


def test_policy_and_policy_file_are_exclusive(tmp_path: Path) -> None:
    write_policy(tmp_path)
    both = "dialog:\n  policy_file: policy.yaml\n  policy:\n" + textwrap.indent(BASE, "    ")
    with pytest.raises(ConfigError, match="give either policy_file or policy, not both"):
        load_config(write_config(tmp_path, both))
    with pytest.raises(ConfigError, match="required: give policy_file or an inline policy"):
        load_config(write_config(tmp_path, "dialog:\n  llm: {threads: 1}\n"))


def test_llm_backend_options(tmp_path: Path) -> None:
    write_policy(tmp_path)
    openai = "dialog:\n  policy_file: policy.yaml\n  llm: {backend: openai}\n"
    with pytest.raises(ConfigError, match="dialog.llm.base_url: required for backend openai"):
        load_config(write_config(tmp_path, openai))
    llama = "dialog:\n  policy_file: policy.yaml\n  llm: {base_url: 'http://h:8000/v1'}\n"
    with pytest.raises(ConfigError, match="dialog.llm.base_url: only for backend openai"):
        load_config(write_config(tmp_path, llama))
    served = (
        "dialog:\n  policy_file: policy.yaml\n"
        "  llm: {backend: openai, base_url: 'http://127.0.0.1:8000/v1', model: qwen}\n"
    )
    assert load_config(write_config(tmp_path, served)).dialog.llm.base_url is not None
