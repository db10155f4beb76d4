"""SIP user agent: sans-IO core (messages, transactions, auth, dialogs) and asyncio adapters.

The core takes bytes and events and returns bytes and events; `ua.UserAgent` is the thin
asyncio layer that owns the sockets and the clock.
"""

from agentd.sip.message import Headers, SipRequest, SipResponse
from agentd.sip.parser import SipParseError, StreamFramer, parse_message
from agentd.sip.uri import (
    AbsoluteUri,
    NameAddr,
    Params,
    SipUri,
    UnsupportedSchemeError,
    UriError,
    Via,
    parse_absolute_uri,
    parse_cseq,
    parse_name_addr,
    parse_name_addr_list,
    parse_uri,
    parse_via,
    tag_of,
)
from agentd.sip.validate import Rejection, check_request

__all__ = [
    "AbsoluteUri",
    "Headers",
    "NameAddr",
    "Params",
    "Rejection",
    "SipParseError",
    "SipRequest",
    "SipResponse",
    "SipUri",
    "StreamFramer",
    "UnsupportedSchemeError",
    "UriError",
    "Via",
    "check_request",
    "parse_absolute_uri",
    "parse_cseq",
    "parse_message",
    "parse_name_addr",
    "parse_name_addr_list",
    "parse_uri",
    "parse_via",
    "tag_of",
]
