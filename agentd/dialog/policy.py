"""The call-flow policy: one YAML file saying who the agent is, what it knows, which tools it
may use, the jobs it does, and when it must hand the call to a person.

policy = load_policy("examples/dental/policy.yaml")   # raises ConfigError (file:line: key: ...)
policy.tools["find_slots"].builtin, policy.target_uri("front_desk"), policy.is_open(now)

The same models validate an inline `dialog.policy:` in config.yaml (`DialogConfig`). Paths
(databases, records, ${file:...} secrets) are resolved against the file that names them.
Webhook texts are `TemplateText`: secrets are resolved at load and never shown in repr/str.
"""

from __future__ import annotations

import difflib
import os
import re
import string
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agentd.config.validate import validate_document
from agentd.config.values import (
    FilePath,
    Integer,
    Number,
    Section,
    TransferTarget,
    TypeName,
    blame,
    resolve_path,
)
from agentd.config.yaml_source import parse_yaml
from agentd.dialog.types import ToolError

# ---- the base of every policy model --------------------------------------------------------


class PolicySection(Section):
    """A config Section whose unknown keys get a did-you-mean even inside a mapping or list
    (the config layer's hint follows field names only, and tools/rules sit under names and
    indices)."""

    @model_validator(mode="before")
    @classmethod
    def _unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if isinstance(key, str) and key not in cls.model_fields:
                    close = difflib.get_close_matches(key, list(cls.model_fields), n=1, cutoff=0.6)
                    hint = (
                        f" (did you mean {close[0]!r}?)"
                        if close
                        else f"; expected one of: {', '.join(cls.model_fields)}"
                    )
                    raise blame(key, "unknown key" + hint)
        return data


# ---- names and texts ------------------------------------------------------------------------

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


def _text_of(value: Any, what: str = "text") -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"expected {what}, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_name(value: Any) -> str:
    text = _text_of(value, "a name")
    if not _NAME.match(text):
        raise ValueError(
            f"expected a name of lowercase letters, digits and _ starting with a letter, "
            f"got {text!r}"
        )
    return text


def parse_text(value: Any) -> str:
    text = _text_of(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def _did_you_mean(value: str, choices: Iterator[str] | list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _plain(parser: Any, name: str, serialize: Any = str) -> tuple[Any, ...]:
    return (PlainValidator(parser), PlainSerializer(serialize), TypeName(name))


Name = Annotated[str, *_plain(parse_name, "name")]
Text = Annotated[str, *_plain(parse_text, "text")]


# ---- templates with secrets -----------------------------------------------------------------

CALL_FIELDS = ("caller_id", "call_ref")  # template fields every webhook may use
_TEMPLATE_TOKEN = re.compile(r"\$\{([^}]*)\}|\{\{|\}\}|\{([^{}]*)\}|[{}]")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class TemplateText:
    """Text with `{field}` placeholders and secrets already resolved from `${env:NAME}` /
    `${file:path}`. repr/str show the text as written (secret references, not values)."""

    source: str
    parts: tuple[tuple[Literal["text", "field"], str], ...] = field(repr=False, compare=False)
    has_secret: bool = field(default=False, repr=False, compare=False)

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(text for kind, text in self.parts if kind == "field")

    @property
    def single_field(self) -> str | None:
        """The field name when the text is exactly one `{field}` (rendered keeping its type)."""
        if len(self.parts) == 1 and self.parts[0][0] == "field":
            return self.parts[0][1]
        return None

    def render(self, values: Mapping[str, Any], *, quote: bool = False) -> str:
        """Fill in the fields; `quote` percent-encodes values (for URLs). Raises ToolError
        when a field has no value."""
        out: list[str] = []
        for kind, text in self.parts:
            if kind == "text":
                out.append(text)
                continue
            if text not in values:
                raise ToolError(f"missing value for {{{text}}}")
            value = _format_value(values[text])
            out.append(urllib.parse.quote(value, safe="") if quote else value)
        return "".join(out)

    def __str__(self) -> str:
        return self.source


def _format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_template(text: str, *, base_dir: Path | None = None) -> TemplateText:
    """Split `text` into literal text and `{field}`s, resolving secret references.

    Raises ValueError naming what is wrong (never a secret's value)."""
    parts: list[tuple[Literal["text", "field"], str]] = []
    has_secret = False
    position = 0

    def literal(piece: str) -> None:
        if not piece:
            return
        if parts and parts[-1][0] == "text":
            parts[-1] = ("text", parts[-1][1] + piece)
        else:
            parts.append(("text", piece))

    for match in _TEMPLATE_TOKEN.finditer(text):
        literal(text[position : match.start()])
        position = match.end()
        token = match.group(0)
        if match.group(1) is not None:
            literal(_resolve_secret(match.group(1), base_dir))
            has_secret = True
        elif token in ("{{", "}}"):
            literal(token[0])
        elif match.group(2) is not None:
            name = match.group(2).strip()
            if not _IDENTIFIER.match(name):
                raise ValueError(f"bad template field {token!r}: expected {{name}}")
            parts.append(("field", name))
        else:
            raise ValueError(
                f"unbalanced {token!r} in {text!r}; write {token * 2} for a literal {token}"
            )
    literal(text[position:])
    return TemplateText(text, tuple(parts), has_secret)


def _resolve_secret(reference: str, base_dir: Path | None) -> str:
    kind, sep, name = reference.partition(":")
    if kind == "env" and sep and _IDENTIFIER.match(name):
        value = os.environ.get(name)
        if value is None:
            raise ValueError(f"environment variable {name} is not set (${{env:{name}}})")
        return value
    if kind == "file" and sep and name.strip():
        path = Path(name.strip()).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ValueError(f"cannot read secret file '{path}': {reason}") from None
        if not secret:
            raise ValueError(f"secret file '{path}' is empty")
        return secret
    raise ValueError(f"expected ${{env:NAME}} or ${{file:path}}, got ${{{reference}}}")


def _base_dir(info: ValidationInfo) -> Path | None:
    context = info.context or {}
    base = context.get("base_dir") if isinstance(context, dict) else None
    return Path(base) if base is not None else None


def _template_value(value: Any, info: ValidationInfo) -> TemplateText:
    if isinstance(value, TemplateText):
        return value
    return parse_template(_text_of(value), base_dir=_base_dir(info))


def _url_value(value: Any, info: ValidationInfo) -> TemplateText:
    template = _template_value(value, info)
    probe = "".join(text if kind == "text" else "x" for kind, text in template.parts)
    parts = urllib.parse.urlsplit(probe)
    if parts.scheme not in ("http", "https") or not parts.hostname or _CONTROL.search(probe):
        shown = template.source if len(template.source) <= 60 else template.source[:57] + "..."
        raise ValueError(f"expected an http:// or https:// URL, got {shown!r}")
    return template


def _body_value(value: Any, info: ValidationInfo) -> Any:
    """A JSON body whose strings are templates."""

    def convert(item: Any, path: str) -> Any:
        if isinstance(item, str):
            try:
                return _template_value(item, info)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}" if path else str(exc)) from None
        if isinstance(item, dict):
            return {str(k): convert(v, f"{path}.{k}" if path else str(k)) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [convert(v, f"{path}[{i}]") for i, v in enumerate(item)]
        if item is None or isinstance(item, bool | int | float):
            return item
        raise ValueError(f"{path}: expected JSON data, got {_shown(item)}")

    return convert(value, "")


def _dump_body(value: Any) -> Any:
    if isinstance(value, TemplateText):
        return value.source
    if isinstance(value, dict):
        return {k: _dump_body(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_dump_body(v) for v in value]
    return value


def _body_fields(value: Any) -> Iterator[tuple[str, TemplateText]]:
    """(key path, template) for every string in a body."""
    if isinstance(value, TemplateText):
        yield "", value
    elif isinstance(value, dict):
        for key, item in value.items():
            for path, template in _body_fields(item):
                yield (f"{key}.{path}" if path else key), template
    elif isinstance(value, list):
        for item in value:
            for _path, template in _body_fields(item):
                yield "", template  # list indices cannot be blamed by key; the body is


def render_body(value: Any, values: Mapping[str, Any]) -> Any:
    """A body with its templates filled in; a string that is exactly `{field}` keeps the
    value's JSON type."""
    if isinstance(value, TemplateText):
        single = value.single_field
        if single is not None:
            if single not in values:
                raise ToolError(f"missing value for {{{single}}}")
            return values[single]
        return value.render(values)
    if isinstance(value, dict):
        return {k: render_body(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [render_body(v, values) for v in value]
    return value


Template = Annotated[
    TemplateText, PlainValidator(_template_value), PlainSerializer(str), TypeName("template")
]
UrlTemplate = Annotated[
    TemplateText, PlainValidator(_url_value), PlainSerializer(str), TypeName("URL template")
]
BodyTemplate = Annotated[
    Any, PlainValidator(_body_value), PlainSerializer(_dump_body), TypeName("JSON template")
]


# ---- cross-checks against names declared elsewhere in the same policy -----------------------

_DECLARED_KEY = "dialog_policy_declared"


@dataclass(frozen=True, slots=True)
class _Declared:
    """Names the policy declares, stashed in the validation context by `Policy` before its
    parts validate, so a rule or tool can point at its own bad key (with list indices)."""

    tools: frozenset[str]
    targets: frozenset[str]
    has_hours: bool


def _declared(info: ValidationInfo) -> _Declared | None:
    context = info.context
    found = context.get(_DECLARED_KEY) if isinstance(context, dict) else None
    return found if isinstance(found, _Declared) else None


def _keys(value: Any) -> frozenset[str]:
    return frozenset(str(key) for key in value) if isinstance(value, dict) else frozenset()


def _unknown_target(name: str, targets: frozenset[str] | set[str]) -> str:
    declared = ", ".join(sorted(targets)) or "none"
    return (
        f"unknown transfer target {name!r}{_did_you_mean(name, sorted(targets))}; "
        f"declared in escalation.targets: {declared}"
    )


def _unknown_tool(name: str, tools: frozenset[str] | set[str]) -> str:
    declared = ", ".join(sorted(tools)) or "none"
    return f"unknown tool {name!r}{_did_you_mean(name, sorted(tools))}; declared tools: {declared}"


# ---- agent and knowledge --------------------------------------------------------------------


def parse_timezone(value: Any) -> str:
    text = _text_of(value, "a time zone such as Europe/London")
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        hint = _did_you_mean(text, sorted(available_timezones()))
        raise ValueError(f"unknown time zone {text!r}{hint}") from None
    return text


TimeZoneName = Annotated[str, *_plain(parse_timezone, "time zone")]


class AgentSpec(PolicySection):
    """Who the agent is and how it opens and closes a call."""

    name: Text = Field(description="The agent's name, as it introduces itself.")
    organisation: Text = Field(description="The business it answers for.")
    persona: Text = Field(
        "warm, brief, professional receptionist", description="Tone and manner, a few words."
    )
    language: str = Field("en", pattern=r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$", description="BCP 47.")
    greeting: Text = Field(description="First words of every call.")
    goodbye: Text = Field(description="Last words before the agent hangs up.")
    never_say: tuple[Text, ...] = Field(
        (), description="Topics or promises the agent must not make."
    )
    timezone: TimeZoneName = Field("UTC", description="Business time zone (hours, dates).")
    date_order: Literal["dmy", "mdy"] = Field(
        "dmy", description='How to read "05/03/1985": dmy = 5 March (UK), mdy = May 3 (US).'
    )

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class KnowledgeItem(PolicySection):
    topic: Text
    answer: Text


# ---- tools ----------------------------------------------------------------------------------

BUILTINS: dict[str, str] = {
    "calendar.find_slots": "Find free appointment slots on a day.",
    "calendar.book": "Book a free slot for the caller.",
    "calendar.move": "Move the caller's appointment to another free slot.",
    "calendar.cancel": "Cancel the caller's appointment.",
    "calendar.list": "List the caller's upcoming appointments.",
    "records.lookup": "Look up a record by its key or by the caller's phone number.",
    "records.update": "Change allowed fields of the caller's record.",
    "identity.verify": "Check the caller's identity against our records.",
}
_COMMON_OPTIONS = frozenset({"builtin", "webhook", "description", "confirm", "requires"})
_RECORD_KEYS = frozenset({"records", "table", "key", "caller_id_field"})
# Options each builtin accepts (besides the common ones) and those it needs.
_BUILTIN_OPTIONS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "calendar.find_slots": (
        frozenset({"database", "max_results", "look_ahead_days"}),
        frozenset({"database"}),
    ),
    "calendar.book": (frozenset({"database"}), frozenset({"database"})),
    "calendar.move": (frozenset({"database"}), frozenset({"database"})),
    "calendar.cancel": (frozenset({"database"}), frozenset({"database"})),
    "calendar.list": (frozenset({"database"}), frozenset({"database"})),
    "records.lookup": (_RECORD_KEYS | {"fields"}, frozenset({"records"})),
    "records.update": (_RECORD_KEYS | {"fields", "condition"}, frozenset({"records", "fields"})),
    "identity.verify": (
        frozenset({"records", "table", "match", "id_field"}),
        frozenset({"records"}),
    ),
}
DEFAULT_IDENTITY_MATCH = ("name", "date_of_birth")
# records.update's guard: one comparison such as `shipped == 0` or `status != 'delivered'`.
_CONDITION = re.compile(
    r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*(==|!=|<=|>=|<|>)\s*"
    r"('[^']*'|\"[^\"]*\"|-?[0-9]+(\.[0-9]+)?|true|false|null)\s*$",
    re.IGNORECASE,
)
_SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
_JSON_TYPES = ("string", "integer", "number", "boolean")
_PROPERTY_KEYS = frozenset(
    {"type", "description", "enum", "pattern", "minimum", "maximum", "minLength", "maxLength"}
)
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


def parse_builtin(value: Any) -> str:
    text = _text_of(value, "a builtin tool name")
    if text not in BUILTINS:
        raise ValueError(
            f"unknown builtin {text!r}{_did_you_mean(text, list(BUILTINS))}; "
            f"expected one of: {', '.join(BUILTINS)}"
        )
    return text


def _existing_file(value: Any, info: ValidationInfo) -> Path:
    path = resolve_path(value, info)
    if not path.is_file():
        raise ValueError(f"file not found: '{path}'")
    return path


def _header_name(value: Any) -> str:
    text = _text_of(value, "a header name")
    if not _HEADER_NAME.match(text):
        raise ValueError(f"expected an HTTP header name, got {text!r}")
    return text


BuiltinName = Annotated[str, *_plain(parse_builtin, "builtin tool")]
DataFile = Annotated[Path, *_plain(_existing_file, "existing file")]
HeaderName = Annotated[str, *_plain(_header_name, "header name")]


class WebhookSpec(PolicySection):
    """An HTTP call; url, header values and body strings may hold {field} templates and
    ${env:NAME} / ${file:path} secrets."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = Field("POST")
    url: UrlTemplate = Field(description="http(s) URL; {field}s are URL-encoded.")
    headers: dict[HeaderName, Template] = Field(default_factory=dict)
    body: BodyTemplate = Field(None, description="JSON body; strings may be templates.")
    timeout_s: Number = Field(3.0, gt=0, le=60, description="Per attempt, in seconds.")
    retries: Integer = Field(0, ge=0, le=5, description="Retries on connect errors and 5xx.")

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _no_body_on_get(self) -> WebhookSpec:
        if self.method == "GET" and self.body is not None:
            raise blame("body", "a GET request has no body; use POST or put values in the URL")
        return self

    def templates(self) -> Iterator[tuple[str, TemplateText]]:
        """(key relative to this spec, template) for every template it holds."""
        yield "url", self.url
        for name, value in self.headers.items():
            yield f"headers.{name}", value
        for path, template in _body_fields(self.body):
            yield (f"body.{path}" if path else "body"), template

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(name for _key, t in self.templates() for name in t.fields)

    def render_url(self, values: Mapping[str, Any]) -> str:
        return self.url.render(values, quote=True)

    def render_headers(self, values: Mapping[str, Any]) -> dict[str, str]:
        headers = {name: value.render(values) for name, value in self.headers.items()}
        for name, text in headers.items():
            if _CONTROL.search(text):
                raise ToolError(f"header {name} would contain a control character")
        return headers

    def render_body(self, values: Mapping[str, Any]) -> Any:
        return render_body(self.body, values)

    def check_fields(self, allowed: set[str] | frozenset[str], prefix: str) -> None:
        for key, template in self.templates():
            for name in sorted(template.fields - set(allowed)):
                raise blame(
                    f"{prefix}{key}",
                    f"unknown template field {{{name}}}{_did_you_mean(name, sorted(allowed))}; "
                    f"allowed: {', '.join('{' + a + '}' for a in sorted(allowed))}",
                )


def _check_parameters(schema: dict[str, Any]) -> None:
    """A small JSON schema the LLM grammar can follow: an object of scalar properties."""
    allowed_top = {"type", "properties", "required", "additionalProperties", "description"}
    for key in schema:
        if key not in allowed_top:
            raise blame(f"parameters.{key}", f"unsupported schema key; use {sorted(allowed_top)}")
    if schema.get("type") != "object":
        raise blame("parameters.type", "must be object")
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        raise blame("parameters.properties", "expected a mapping of argument names")
    for name, spec in properties.items():
        where = f"parameters.properties.{name}"
        if not isinstance(name, str) or not _IDENTIFIER.match(name):
            raise blame(where, "argument names are letters, digits and _")
        if name in CALL_FIELDS:
            raise blame(where, f"{name} is filled in by the call; do not declare it")
        if not isinstance(spec, dict):
            raise blame(where, "expected a mapping such as {type: string}")
        for key in spec:
            if key not in _PROPERTY_KEYS:
                raise blame(
                    f"{where}.{key}", f"unsupported schema key; use {sorted(_PROPERTY_KEYS)}"
                )
        if "enum" not in spec and spec.get("type") not in _JSON_TYPES:
            raise blame(f"{where}.type", f"expected one of {', '.join(_JSON_TYPES)}")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise blame("parameters.required", "expected a list of argument names")
    for name in required:
        if name not in properties:
            raise blame("parameters.required", f"{name!r} is not in properties")


class ToolSpec(PolicySection):
    """One business tool: exactly one of `builtin` and `webhook`, plus the builtin's options."""

    builtin: BuiltinName | None = Field(None, description="A built-in tool.")
    webhook: WebhookSpec | None = Field(None, description="An HTTP call.")
    description: Text | None = Field(None, description="What it does, for the model.")
    confirm: bool = Field(False, description="The caller must say yes to the exact call first.")
    requires: tuple[Name, ...] = Field(
        (), description="Tools that must have succeeded earlier in the call."
    )
    parameters: dict[str, Any] | None = Field(
        None, description="JSON schema of a webhook's arguments (builtins know theirs)."
    )
    # Builtin options (which apply depends on the builtin).
    database: DataFile | None = Field(None, description="Calendar SQLite file.")
    max_results: Integer | None = Field(None, ge=1, le=10, description="Slots offered at most.")
    look_ahead_days: Integer | None = Field(
        None, ge=0, le=90, description="find_slots: days searched after the asked-for one."
    )
    records: DataFile | None = Field(None, description="Records: .csv or SQLite file.")
    table: Name | None = Field(None, description="SQLite table of the records.")
    key: Name | None = Field(None, description="Column the caller gives (order number...).")
    caller_id_field: Name | None = Field(None, description="Column matched to the caller ID.")
    fields: tuple[Name, ...] | None = Field(
        None, description="lookup: columns returned; update: columns that may change."
    )
    condition: Text | None = Field(
        None, description="update: the row must satisfy this, e.g. `shipped == 0`."
    )
    match: tuple[Name, ...] | None = Field(
        None, description="identity.verify: columns to match, name and at least one more."
    )
    id_field: Name | None = Field(
        None, description="identity.verify: column identifying the person (patient_id)."
    )

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> ToolSpec:
        given = self.model_fields_set
        if (self.builtin is None) == (self.webhook is None):
            if self.builtin is None:
                raise blame("builtin", "required: give builtin or webhook")
            raise blame("webhook", "give either builtin or webhook, not both")
        if self.webhook is not None:
            for option in sorted(given - _COMMON_OPTIONS - {"parameters"}):
                raise blame(option, "is an option of builtins, not of a webhook tool")
            if self.description is None:
                raise blame("description", "required for a webhook tool (the model reads it)")
            if self.parameters is not None:
                _check_parameters(self.parameters)
            self.webhook.check_fields(set(self.argument_names) | set(CALL_FIELDS), "webhook.")
        else:
            assert self.builtin is not None
            self._check_builtin_options(self.builtin, given)
        declared = _declared(info)
        if declared is not None:
            for name in self.requires:
                if name not in declared.tools:
                    raise blame("requires", _unknown_tool(name, declared.tools))
        return self

    def _check_builtin_options(self, builtin: str, given: set[str]) -> None:
        allowed, needed = _BUILTIN_OPTIONS[builtin]
        if "parameters" in given:
            raise blame("parameters", f"{builtin} defines its own parameters")
        for option in sorted(given - _COMMON_OPTIONS - allowed):
            raise blame(
                option, f"not an option of {builtin}; its options: {', '.join(sorted(allowed))}"
            )
        for option in sorted(needed - given):
            raise blame("builtin", f"{builtin} needs {option}")
        if self.records is not None:
            sqlite = self.records.suffix.lower() in _SQLITE_SUFFIXES
            if not sqlite and self.records.suffix.lower() != ".csv":
                raise blame("records", "expected a .csv or SQLite (.sqlite, .db) file")
            if sqlite and self.table is None:
                raise blame("records", "an SQLite records file needs table")
            if not sqlite and self.table is not None:
                raise blame("table", "only for SQLite records files")
        if builtin in ("records.lookup", "records.update") and not (
            self.key or self.caller_id_field
        ):
            raise blame("builtin", f"{builtin} needs key, caller_id_field or both")
        if self.match is not None and ("name" not in self.match or len(set(self.match)) < 2):
            raise blame(
                "match", "expected name and at least one more column, e.g. [name, postcode]"
            )
        if builtin == "records.update":
            if not self.fields:
                raise blame("fields", "list the columns the caller may change")
            if self.records is not None and self.table is None:
                raise blame("records", "records.update works on an SQLite table only")
            if self.condition is not None and not _CONDITION.match(self.condition):
                raise blame(
                    "condition", "expected `column OP value`, e.g. shipped == 0 (quote text)"
                )

    @property
    def kind(self) -> Literal["builtin", "webhook"]:
        return "builtin" if self.builtin is not None else "webhook"

    @property
    def argument_names(self) -> tuple[str, ...]:
        """A webhook's declared arguments (builtins' come from the tools themselves)."""
        properties = (self.parameters or {}).get("properties") or {}
        return tuple(properties)

    @property
    def parameters_schema(self) -> dict[str, Any]:
        """A webhook's argument schema (an empty object schema when none was given)."""
        return self.parameters or {"type": "object", "properties": {}, "required": []}

    @property
    def description_text(self) -> str:
        if self.description is not None:
            return self.description
        return BUILTINS[self.builtin] if self.builtin is not None else ""

    @property
    def identity_match(self) -> tuple[str, ...]:
        return self.match or DEFAULT_IDENTITY_MATCH


# ---- flows ----------------------------------------------------------------------------------


class FlowSpec(PolicySection):
    """A repeatable job: its goal, the facts to collect and the steps to follow."""

    goal: Text
    collect: tuple[Name, ...] = ()
    steps: tuple[Text, ...] = ()

    @model_validator(mode="after")
    def _has_steps(self) -> FlowSpec:
        if not self.steps:
            raise blame("steps", "a flow needs at least one step")
        return self


# ---- escalation -----------------------------------------------------------------------------

RuleKind = Literal[
    "caller_asks_for_human",
    "topic",
    "misunderstanding",
    "low_confidence",
    "frustration",
    "tool_failure",
    "outside_hours",
]
RULE_KINDS: tuple[str, ...] = RuleKind.__args__  # type: ignore[attr-defined]


def _parse_rule_kind(value: Any) -> str:
    text = _text_of(value, "a rule kind")
    if text not in RULE_KINDS:
        raise ValueError(
            f"unknown rule {text!r}{_did_you_mean(text, RULE_KINDS)}; "
            f"expected one of: {', '.join(RULE_KINDS)}"
        )
    return text


DEFAULT_RULE_COUNT = 2  # misunderstanding / low_confidence: times in a row


class TargetSpec(PolicySection):
    uri: TransferTarget
    label: Text | None = None


def _target_value(value: Any) -> Any:
    # `front_desk: "100"` is shorthand for `front_desk: {uri: "100"}`.
    if isinstance(value, str | int) and not isinstance(value, bool):
        return {"uri": str(value)}
    return value


class EscalationRule(PolicySection):
    """When to hand the call over (or close it) and to whom."""

    when: Annotated[str, *_plain(_parse_rule_kind, "rule kind")]
    target: Name | None = Field(description="A declared target; null: say `say` and end.")
    topics: tuple[Text, ...] = ()
    count: Integer | None = Field(
        None, ge=1, le=20, description="Times in a row (default 2); None for other kinds."
    )
    below: Number | None = Field(None, gt=0, lt=1)
    say: Text | None = None

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> EscalationRule:
        kind, given = self.when, self.model_fields_set
        if kind == "topic" and not self.topics:
            raise blame("topics", "a topic rule needs a non-empty topics list")
        if kind != "topic" and "topics" in given:
            raise blame("topics", "only for when: topic")
        if kind not in ("misunderstanding", "low_confidence") and "count" in given:
            raise blame("count", "only for when: misunderstanding or low_confidence")
        if kind != "low_confidence" and "below" in given:
            raise blame("below", "only for when: low_confidence")
        if kind == "low_confidence" and self.below is None:
            raise blame("below", "required: the ASR confidence threshold (0-1)")
        if self.target is None and self.say is None:
            raise blame("say", "required when target is null (said before the call ends)")
        declared = _declared(info)
        if declared is not None:
            if self.target is not None and self.target not in declared.targets:
                raise blame("target", _unknown_target(self.target, declared.targets))
            if kind == "outside_hours" and not declared.has_hours:
                raise blame("when", "outside_hours needs an hours: section")
        if kind in ("misunderstanding", "low_confidence") and self.count is None:
            return self.model_copy(update={"count": DEFAULT_RULE_COUNT})
        return self


class TransferFailure(PolicySection):
    say: Text = "I'm sorry, nobody is available right now. I'll make sure someone calls you back."
    then: Literal["end_call", "continue"] = "end_call"


_HANDOFF_FIELDS = ("target", "target_label")


def _handoff_line(value: Any) -> str:
    text = parse_text(value)
    try:
        names = [name for _lit, name, _spec, _conv in string.Formatter().parse(text) if name]
    except ValueError as exc:
        raise ValueError(f"bad template: {exc}") from None
    for name in names:
        if name not in _HANDOFF_FIELDS:
            raise ValueError(f"unknown field {{{name}}}; allowed: {{target}}, {{target_label}}")
    return text


class EscalationSpec(PolicySection):
    targets: dict[Name, TargetSpec] = Field(default_factory=dict)
    handoff_line: Annotated[str, *_plain(_handoff_line, "text")] = (
        "Let me put you through to {target_label} now."
    )
    handoff_webhook: WebhookSpec | None = None
    rules: tuple[EscalationRule, ...] = ()
    on_transfer_failure: TransferFailure = Field(default_factory=TransferFailure)

    @field_validator("targets", mode="before")
    @classmethod
    def _target_shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {name: _target_value(target) for name, target in value.items()}
        return value

    @model_validator(mode="after")
    def _check(self) -> EscalationSpec:
        if self.handoff_webhook is not None:
            self.handoff_webhook.check_fields(set(CALL_FIELDS), "handoff_webhook.")
        return self


# ---- hours and limits -----------------------------------------------------------------------

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_RANGE = re.compile(r"^([0-9]{1,2}):([0-9]{2})\s*-\s*([0-9]{1,2}):([0-9]{2})$")
MinuteRange = tuple[int, int]  # [start, end) in minutes after local midnight


def parse_opening_hours(value: Any) -> tuple[MinuteRange, ...]:
    """'08:00-18:00', '08:00-12:00, 13:00-17:00', a list of such, or 'closed'."""
    if isinstance(value, list | tuple):
        pieces = [_text_of(item, "HH:MM-HH:MM") for item in value]
    else:
        pieces = _text_of(value, "HH:MM-HH:MM").split(",")
    pieces = [piece.strip() for piece in pieces if piece.strip()]
    if pieces == ["closed"]:
        return ()
    ranges: list[MinuteRange] = []
    for piece in pieces:
        match = _RANGE.match(piece)
        if match is None:
            raise ValueError(f"expected HH:MM-HH:MM (or closed), got {piece!r}")
        sh, sm, eh, em = (int(group) for group in match.groups())
        if sh > 23 or sm > 59 or em > 59 or eh > 24 or (eh == 24 and em):
            raise ValueError(f"no such time in {piece!r}")
        start, end = sh * 60 + sm, eh * 60 + em
        if start >= end:
            raise ValueError(
                f"{piece!r} ends before it starts; split a range past midnight over two days"
            )
        ranges.append((start, end))
    ranges.sort()
    for (_s1, e1), (s2, _e2) in zip(ranges, ranges[1:], strict=False):
        if s2 < e1:
            raise ValueError(f"overlapping ranges in {value!r}")
    if not ranges:
        raise ValueError("expected HH:MM-HH:MM (or closed), got nothing")
    return tuple(ranges)


def _hours_text(ranges: tuple[MinuteRange, ...]) -> str:
    if not ranges:
        return "closed"
    return ", ".join(f"{s // 60:02d}:{s % 60:02d}-{e // 60:02d}:{e % 60:02d}" for s, e in ranges)


DayHours = Annotated[
    tuple[MinuteRange, ...],
    PlainValidator(parse_opening_hours),
    PlainSerializer(_hours_text),
    TypeName("HH:MM-HH:MM"),
]


class HoursSpec(PolicySection):
    """Opening hours per weekday in the agent's time zone; a missing day is closed."""

    monday: DayHours = ()
    tuesday: DayHours = ()
    wednesday: DayHours = ()
    thursday: DayHours = ()
    friday: DayHours = ()
    saturday: DayHours = ()
    sunday: DayHours = ()

    def ranges(self, weekday: int) -> tuple[MinuteRange, ...]:
        """Ranges of a day, Monday = 0."""
        ranges: tuple[MinuteRange, ...] = getattr(self, WEEKDAYS[weekday])
        return ranges


class LimitsSpec(PolicySection):
    max_turns: Integer = Field(30, ge=1, le=500)
    max_call_seconds: Integer = Field(600, ge=10, le=86_400)
    silence_reprompt_seconds: Number = Field(7.0, gt=0, le=120)
    max_reprompts: Integer = Field(2, ge=0, le=10)
    reprompt: Text = "Are you still there?"
    final_line: Text = "I haven't heard anything, so I'll end the call now. Goodbye."


# ---- DTMF -----------------------------------------------------------------------------------

DtmfKey = Annotated[
    Literal["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "#"], TypeName("DTMF key")
]


class DtmfAction(PolicySection):
    """What a key does; keys not listed reach the agent as keypad input."""

    transfer: Name | None = None
    say: Text | None = None
    end_call: bool = False

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> DtmfAction:
        if self.transfer is not None and self.end_call:
            raise blame("end_call", "give either transfer or end_call, not both")
        if self.transfer is None and self.say is None and not self.end_call:
            raise blame("transfer", "required: give transfer, say or end_call")
        declared = _declared(info)
        known = declared.targets if declared is not None else None
        if known is not None and self.transfer is not None and self.transfer not in known:
            raise blame("transfer", _unknown_target(self.transfer, known))
        return self


# ---- the policy -----------------------------------------------------------------------------


class Policy(PolicySection):
    """A validated call-flow policy. Paths inside are absolute."""

    agent: AgentSpec
    knowledge: tuple[KnowledgeItem, ...] = ()
    tools: dict[Name, ToolSpec] = Field(default_factory=dict)
    flows: dict[Name, FlowSpec] = Field(default_factory=dict)
    escalation: EscalationSpec = Field(default_factory=EscalationSpec)
    hours: HoursSpec | None = Field(None, description="Unset: always open.")
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    dtmf: dict[DtmfKey, DtmfAction] = Field(default_factory=dict)

    _source: Path | None = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _declare_names(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and isinstance(info.context, dict):
            escalation = data.get("escalation")
            info.context[_DECLARED_KEY] = _Declared(
                tools=_keys(data.get("tools")),
                targets=_keys(escalation.get("targets") if isinstance(escalation, dict) else None),
                has_hours=data.get("hours") is not None,
            )
        return data

    @field_validator("dtmf", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        # Unquoted `5:` is an int key in YAML; "*" and "#" must be quoted anyway.
        if isinstance(value, dict):
            return {str(k) if isinstance(k, int) else k: v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        # The parts check their own names when validated through load_policy (precise
        # lines); this repeats the checks for a Policy built without that context.
        targets, tools = set(self.escalation.targets), set(self.tools)
        for index, rule in enumerate(self.escalation.rules):
            if rule.target is not None and rule.target not in targets:
                message = _unknown_target(rule.target, targets)
                raise blame("escalation.rules", f"[{index}] {message}")
            if rule.when == "outside_hours" and self.hours is None:
                raise blame("escalation.rules", f"[{index}] outside_hours needs an hours: section")
        for key, action in self.dtmf.items():
            if action.transfer is not None and action.transfer not in targets:
                raise blame(f"dtmf.{key}.transfer", _unknown_target(action.transfer, targets))
        for name, spec in self.tools.items():
            for needed in spec.requires:
                if needed not in tools:
                    raise blame(f"tools.{name}.requires", _unknown_tool(needed, tools))
        cycle = _requires_cycle({name: spec.requires for name, spec in self.tools.items()})
        if cycle:
            raise blame(
                f"tools.{cycle[0]}.requires",
                "requires form a loop (" + " -> ".join(cycle) + "); no tool in it could run",
            )
        return self

    # -- helpers the agent uses --

    @property
    def source(self) -> Path | None:
        """The policy file it was loaded from (None when inline or built in code)."""
        return self._source

    @property
    def zone(self) -> ZoneInfo:
        return self.agent.zone

    @property
    def tool_specs(self) -> Mapping[str, ToolSpec]:
        return self.tools

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(self.escalation.targets)

    def target_uri(self, name: str) -> str:
        """The SIP URI or extension of a declared target; KeyError for an unknown name."""
        return self.escalation.targets[name].uri

    def target_label(self, name: str) -> str:
        """How the agent names a target aloud ('front desk' for front_desk by default)."""
        spec = self.escalation.targets[name]
        return spec.label if spec.label is not None else name.replace("_", " ")

    def handoff_text(self, target: str) -> str:
        """The hand-off line for a declared target."""
        return self.escalation.handoff_line.format(
            target=target, target_label=self.target_label(target)
        )

    def rules_for(self, kind: str) -> tuple[EscalationRule, ...]:
        return tuple(rule for rule in self.escalation.rules if rule.when == kind)

    def dtmf_action(self, key: str) -> DtmfAction | None:
        return self.dtmf.get(key)

    def local_time(self, when: datetime) -> datetime:
        """`when` (timezone-aware) in the business time zone."""
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError("when must be timezone-aware")
        return when.astimezone(self.zone)

    def is_open(self, when: datetime) -> bool:
        """Whether `when` (timezone-aware) falls in the opening hours; always open without
        an hours section."""
        local = self.local_time(when)
        if self.hours is None:
            return True
        minute = local.hour * 60 + local.minute
        return any(start <= minute < end for start, end in self.hours.ranges(local.weekday()))

    def hours_summary(self) -> str:
        """Opening hours as one line per day ('monday: 08:00-18:00'), for prompts."""
        if self.hours is None:
            return "open at all times"
        return "\n".join(
            f"{day}: {_hours_text(self.hours.ranges(index))}" for index, day in enumerate(WEEKDAYS)
        )

    def data_files(self) -> tuple[Path, ...]:
        """Every database/records file the tools use (to copy a fresh set per test call)."""
        found: list[Path] = []
        for spec in self.tools.values():
            for path in (spec.database, spec.records):
                if path is not None and path not in found:
                    found.append(path)
        return tuple(found)


def _requires_cycle(graph: Mapping[str, tuple[str, ...]]) -> list[str]:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt in graph and state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for node in graph:
        if state.get(node) is None:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


# ---- loading --------------------------------------------------------------------------------


def parse_policy(text: str, source: str = "<string>", base_dir: str | Path | None = None) -> Policy:
    """Parse and validate policy YAML text; raises ConfigError (file:line: key: message)."""
    document = parse_yaml(text, source)
    return validate_document(
        Policy,
        document.data,
        source=source,
        root=document.root,
        base_dir=base_dir,
        prior_issues=document.issues,
    )


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; relative paths in it resolve against its directory."""
    from agentd.config.loader import read_config_text

    text = read_config_text(path)
    policy = parse_policy(text, source=str(path), base_dir=Path(path).resolve().parent)
    policy._source = Path(path).resolve()
    return policy


# ---- the dialog: section of config.yaml -----------------------------------------------------


def _http_url(value: Any) -> str:
    text = _text_of(value, "a URL")
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {text!r}")
    return text


class LlmConfig(Section):
    """The language model that plays the agent."""

    backend: Literal["llama", "openai"] = Field(
        "llama", description="llama: local llama.cpp; openai: an OpenAI-compatible server."
    )
    model: str = Field(
        "qwen2.5-coder-1.5b-instruct-q4_k_m",
        min_length=1,
        description="Model id (llama, see `agentd models list`) or model name (openai).",
    )
    base_url: Annotated[str, *_plain(_http_url, "URL")] | None = Field(
        None, description="openai backend: server URL, e.g. http://gpu-host:8000/v1."
    )
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="openai backend: environment variable holding the API key.",
    )
    threads: Integer = Field(2, ge=1, le=64, description="CPU threads (llama).")
    adapt_threads: bool = Field(
        True,
        description="llama: use fewer threads while other processes keep cores busy "
        "(threads spin-wait on a taken core: 2-core box, one busy process: 8 vs 18 tokens/s).",
    )
    context_tokens: Integer = Field(4096, ge=512, le=131_072, description="Context window.")
    temperature: Number = Field(0.0, ge=0, le=2, description="0 = deterministic.")
    seed: Integer = Field(42, ge=0, description="Sampling seed.")
    max_tokens: Integer = Field(200, ge=16, le=4096, description="Longest reply in tokens.")

    @model_validator(mode="after")
    def _backend_options(self) -> LlmConfig:
        if self.backend == "openai" and self.base_url is None:
            raise blame("base_url", "required for backend openai")
        if self.backend == "llama":
            for option in ("base_url", "api_key_env"):
                if getattr(self, option) is not None:
                    raise blame(option, "only for backend openai")
        return self

    def api_key(self) -> str | None:
        """The API key from `api_key_env` (None when unset or not in the environment)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class DialogConfig(Section):
    """The AI agent: its policy (a file or inline) and the LLM. Absent: the line-test app."""

    policy_file: FilePath | None = Field(
        None,
        description="Policy YAML file (exactly one of policy_file and policy); "
        "relative to the config file.",
    )
    policy: Policy | None = Field(
        None, description="The policy inline (see examples/*/policy.yaml for its keys)."
    )
    llm: LlmConfig = Field(default_factory=LlmConfig, description="Language model.")

    @model_validator(mode="after")
    def _load_policy(self) -> DialogConfig:
        if not self.model_fields_set:
            return self  # no dialog: section
        if self.policy_file is not None and self.policy is not None:
            raise blame("policy_file", "give either policy_file or policy, not both")
        if self.policy_file is None and self.policy is None:
            raise blame("policy_file", "required: give policy_file or an inline policy")
        if self.policy_file is None:
            return self
        if not self.policy_file.is_file():
            raise blame("policy_file", f"file not found: '{self.policy_file}'")
        # Errors inside the policy file are raised as they are (ConfigError naming that
        # file and its lines), not folded into this file's errors.
        return self.model_copy(update={"policy": load_policy(self.policy_file)})

    @property
    def enabled(self) -> bool:
        return self.policy is not None
