"""Value types shared by the configuration sections, each with an operator-readable error."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    PlainValidator,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Context key through which a cross-field check names the key it blames (relative to the
# model that raised it), so the error points at that key's line rather than the section's.
BLAME_CTX_KEY = "config_blame"


@dataclass(frozen=True, slots=True)
class TypeName:
    """Annotation marker: how the reference table spells a value type."""

    name: str


class Section(BaseModel):
    """Base of every configuration section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def blame(key: str, message: str) -> PydanticCustomError:
    """An error for a cross-field check, reported at `key` of the model that raises it."""
    return PydanticCustomError("config_check", message, {BLAME_CTX_KEY: key})


@dataclass(frozen=True, slots=True)
class HostPort:
    """A host name or IP literal with a port, e.g. the SIP registrar."""

    host: str
    port: int

    @property
    def host_is_ip(self) -> bool:
        return _ip_or_none(self.host) is not None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


_HOST_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_SIP_USER = re.compile(r"^[A-Za-z0-9\-_.!~*'()&=+$,;?/]+$")
_DIAL_STRING = re.compile(r"^[A-Za-z0-9*#+._-]+$")
_SIP_URI = re.compile(r"^sips?:[^\s<>\"]+$", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
DEFAULT_SIP_PORT = 5060


def _ip_or_none(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _is_hostname(text: str) -> bool:
    name = text[:-1] if text.endswith(".") else text
    return 0 < len(name) <= 253 and all(_HOST_LABEL.match(label) for label in name.split("."))


def _require_str(value: Any, expected: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML reads `extension: 1001` as an int; the loader keeps leading zeros as text,
        # so turning an int back into digits loses nothing.
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"expected {expected}, got {value!r}")
    return value


def parse_host_port(value: Any) -> HostPort:
    text = _require_str(value, "host:port")
    bad = ValueError(f"expected host:port, got {text!r}")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not isinstance(_ip_or_none(host), ipaddress.IPv6Address):
            raise bad
        if rest and not rest.startswith(":"):
            raise bad
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        raise ValueError(f"expected host:port (IPv6 as [addr]:port), got {text!r}")
    else:
        host, sep, port_text_or_empty = text.partition(":")
        port_text = port_text_or_empty if sep else None
        if not (_is_hostname(host) or _ip_or_none(host) is not None):
            raise bad
    if port_text is None:
        return HostPort(host, DEFAULT_SIP_PORT)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise bad
    return HostPort(host, int(port_text))


def parse_host(value: Any) -> str:
    text = _require_str(value, "a host name or IP address")
    if _is_hostname(text) or _ip_or_none(text) is not None:
        return text
    raise ValueError(f"expected a host name or IP address, got {text!r}")


def parse_local_address(value: Any) -> str:
    text = _require_str(value, "an IP address")
    address = _ip_or_none(text)
    if address is None:
        raise ValueError(f"expected an IP address, got {text!r}")
    if address.is_unspecified:
        raise ValueError(
            f"{text!r} cannot be advertised to the PBX; give the address it reaches us on"
        )
    return str(address)


def parse_network(value: Any) -> IPNetwork:
    text = _require_str(value, "a CIDR such as 192.0.2.0/24")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"expected a CIDR such as 192.0.2.0/24, got {text!r}") from None
    raise ValueError(f"host bits set in {text!r}; did you mean {str(loose)!r}?")


def parse_sip_user(value: Any) -> str:
    text = _require_str(value, "a SIP user name")
    if not _SIP_USER.match(text):
        raise ValueError(
            f"expected a SIP user name (letters, digits, -_.!~*'()&=+$,;?/), got {text!r}"
        )
    return text


def parse_header_text(value: Any) -> str:
    text = _require_str(value, "text")
    if _CONTROL.search(text) or len(text) > 256:
        raise ValueError(f"expected one line of at most 256 printable characters, got {text!r}")
    return text


def parse_transfer_target(value: Any) -> str:
    text = _require_str(value, "an extension or SIP URI")
    if _DIAL_STRING.match(text) or _SIP_URI.match(text):
        return text
    raise ValueError(f"expected an extension number or sip:/sips: URI, got {text!r}")


def resolve_path(value: Any, info: ValidationInfo) -> Path:
    """A path as given, made absolute against the config file's directory."""
    text = _require_str(value, "a file path")
    if not text:
        raise ValueError("expected a file path, got ''")
    path = Path(_expand_env(text)).expanduser()
    base = (info.context or {}).get("base_dir")
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(text: str) -> str:
    """`${NAME}` replaced by the environment variable (systemd's ${CREDENTIALS_DIRECTORY},
    ${STATE_DIRECTORY}...); an unset one is an error, not an empty string."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set (in {text!r})")
        return os.environ[name]

    return _ENV_REFERENCE.sub(value, text)


def _reject_bool(value: Any) -> Any:
    # Lax pydantic reads true as 1; `local_port: true` is a mistake, not port 1.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return value


def _plain(parser: Any, name: str, serialize: Any = str) -> tuple[Any, ...]:
    return (PlainValidator(parser), PlainSerializer(serialize, return_type=str), TypeName(name))


HostPortValue = Annotated[HostPort, *_plain(parse_host_port, "host:port")]
HostValue = Annotated[str, *_plain(parse_host, "host")]
LocalAddress = Annotated[str, *_plain(parse_local_address, "IP address")]
NetworkValue = Annotated[IPNetwork, *_plain(parse_network, "CIDR")]
SipUser = Annotated[str, *_plain(parse_sip_user, "SIP user")]
HeaderText = Annotated[str, *_plain(parse_header_text, "string")]
TransferTarget = Annotated[str, *_plain(parse_transfer_target, "extension or SIP URI")]
FilePath = Annotated[Path, *_plain(resolve_path, "path")]
Integer = Annotated[int, BeforeValidator(_reject_bool)]
Number = Annotated[float, BeforeValidator(_reject_bool)]
