"""Client-side HTTP digest authentication for SIP (RFC 7616, RFC 2617, RFC 3261 §22).

Sans-IO: challenges come in as header value strings, credentials go out as header value
strings. No randomness or clock inside the core; the cnonce is a parameter
(`make_cnonce` is the one helper that uses `secrets`, and `DigestClient` takes a factory).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = [
    "AuthError",
    "DigestChallenge",
    "DigestClient",
    "SUPPORTED_ALGORITHMS",
    "build_authorization",
    "choose_challenge",
    "make_cnonce",
    "parse_challenge",
]


class AuthError(ValueError):
    """A challenge we cannot parse or answer, or credentials we cannot encode."""


# Canonical spelling (RFC 7616 §6.1) -> (hashlib name, is a session variant).
_ALGORITHMS: dict[str, tuple[str, bool]] = {
    "MD5": ("md5", False),
    "MD5-sess": ("md5", True),
    "SHA-256": ("sha256", False),
    "SHA-256-sess": ("sha256", True),
}
_CANONICAL_ALGORITHM = {name.upper(): name for name in _ALGORITHMS}
SUPPORTED_ALGORITHMS: tuple[str, ...] = tuple(_ALGORITHMS)
# Higher is preferred when a response offers several challenges (RFC 7616 §3.7).
_ALGORITHM_RANK = {"SHA-256": 2, "SHA-256-sess": 2, "MD5": 1, "MD5-sess": 1}
_SUPPORTED_QOP = ("auth", "auth-int")
# A server that says stale=true forever would otherwise loop the UA (RFC 7616 leaves it open).
MAX_STALE_ANSWERS = 3

_TOKEN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"
)
_WHITESPACE = " \t\r\n"


@dataclass(frozen=True)
class DigestChallenge:
    """One Digest challenge from a WWW-Authenticate or Proxy-Authenticate field."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    domain: tuple[str, ...] = ()
    userhash: bool = False
    is_proxy: bool = False

    @property
    def supported(self) -> bool:
        """Whether `build_authorization` can answer this challenge."""
        if self.algorithm not in _ALGORITHMS:
            return False
        return not self.qop or any(q in _SUPPORTED_QOP for q in self.qop)


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def _read_token(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _TOKEN_CHARS:
        pos += 1
    return pos


def _read_quoted(text: str, pos: int) -> tuple[str, int]:
    """Read a quoted-string starting at the opening quote; returns (unescaped, next pos)."""
    out: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
        elif char == '"':
            return "".join(out), pos + 1
        else:
            out.append(char)
            pos += 1
    raise AuthError("unterminated quoted string in challenge")


def _parse_params(text: str, pos: int) -> dict[str, str]:
    """auth-param list from `pos`; stops at the start of another challenge (a bare token)."""
    params: dict[str, str] = {}
    while True:
        pos = _skip_ws(text, pos)
        if pos >= len(text):
            return params
        if text[pos] == ",":  # empty list elements are allowed (RFC 7230 §7)
            pos += 1
            continue
        end = _read_token(text, pos)
        if end == pos:
            raise AuthError(f"unexpected {text[pos]!r} at offset {pos} in challenge")
        name = text[pos:end].lower()
        after = _skip_ws(text, end)
        if after >= len(text) or text[after] != "=":
            return params  # another scheme ("..., Basic realm=x") or token68: not ours
        pos = _skip_ws(text, after + 1)
        if pos < len(text) and text[pos] == '"':
            value, pos = _read_quoted(text, pos)
        else:
            end = pos
            while end < len(text) and text[end] not in _WHITESPACE and text[end] != ",":
                end += 1
            value, pos = text[pos:end], end
        params.setdefault(name, value)  # a repeated parameter is malformed; keep the first


def parse_challenge(header_value: str, *, is_proxy: bool = False) -> DigestChallenge:
    """Parse a WWW-Authenticate / Proxy-Authenticate value; AuthError if not usable Digest."""
    if not isinstance(header_value, str):
        raise AuthError("challenge must be a string")
    start = _skip_ws(header_value, 0)
    end = _read_token(header_value, start)
    scheme = header_value[start:end]
    if scheme.lower() != "digest":
        raise AuthError(f"unsupported authentication scheme {scheme or header_value[:20]!r}")
    if end < len(header_value) and header_value[end] not in _WHITESPACE:
        raise AuthError("malformed challenge after scheme")
    params = _parse_params(header_value, end)
    realm = params.get("realm")
    nonce = params.get("nonce")
    if realm is None:
        raise AuthError("digest challenge without realm")
    if not nonce:
        raise AuthError("digest challenge without nonce")
    algorithm = params.get("algorithm", "MD5").strip()
    algorithm = _CANONICAL_ALGORITHM.get(algorithm.upper(), algorithm)
    qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
    return DigestChallenge(
        realm=realm,
        nonce=nonce,
        algorithm=algorithm,
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "").strip().lower() == "true",
        domain=tuple(params.get("domain", "").split()),
        userhash=params.get("userhash", "").strip().lower() == "true",
        is_proxy=is_proxy,
    )


def choose_challenge(values: Iterable[str], is_proxy: bool = False) -> DigestChallenge:
    """Best answerable challenge of several: SHA-256 over MD5, else the first offered."""
    best: DigestChallenge | None = None
    reasons: list[str] = []
    for value in values:
        try:
            challenge = parse_challenge(value, is_proxy=is_proxy)
        except AuthError as exc:
            reasons.append(str(exc))
            continue
        if not challenge.supported:
            reasons.append(f"unsupported algorithm/qop {challenge.algorithm}/{challenge.qop}")
            continue
        if best is None or _ALGORITHM_RANK[challenge.algorithm] > _ALGORITHM_RANK[best.algorithm]:
            best = challenge
    if best is None:
        raise AuthError("no usable digest challenge: " + ("; ".join(reasons) or "none given"))
    return best


def make_cnonce() -> str:
    """A fresh client nonce (the only randomness in this module)."""
    return secrets.token_hex(16)


def _quote(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise AuthError("control character in a digest parameter")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_authorization(
    challenge: DigestChallenge,
    *,
    method: str,
    uri: str,
    username: str,
    password: str,
    cnonce: str,
    nc: int,
    body: bytes = b"",
) -> str:
    """The Authorization / Proxy-Authorization value answering `challenge`."""
    if challenge.algorithm not in _ALGORITHMS:
        raise AuthError(f"unsupported digest algorithm {challenge.algorithm!r}")
    hash_name, session = _ALGORITHMS[challenge.algorithm]

    def digest(text: str | bytes) -> str:
        data = text.encode("utf-8") if isinstance(text, str) else text
        return hashlib.new(hash_name, data).hexdigest()

    if "auth" in challenge.qop:
        qop: str | None = "auth"
    elif "auth-int" in challenge.qop:
        qop = "auth-int"
    elif challenge.qop:
        raise AuthError(f"unsupported qop options {challenge.qop}")
    else:
        qop = None  # RFC 2069 compatibility
    if not 0 < nc <= 0xFFFFFFFF:
        raise AuthError(f"nonce count {nc} out of range")
    if (qop or session) and (not cnonce or '"' in cnonce or any(c in cnonce for c in "\r\n")):
        raise AuthError("a cnonce is required and must not contain quotes or line breaks")
    nc_text = f"{nc:08x}"

    ha1 = digest(f"{username}:{challenge.realm}:{password}")
    if session:
        ha1 = digest(f"{ha1}:{challenge.nonce}:{cnonce}")
    if qop == "auth-int":
        ha2 = digest(f"{method}:{uri}:{digest(body)}")
    else:
        ha2 = digest(f"{method}:{uri}")
    if qop:
        response = digest(f"{ha1}:{challenge.nonce}:{nc_text}:{cnonce}:{qop}:{ha2}")
    else:
        response = digest(f"{ha1}:{challenge.nonce}:{ha2}")

    shown_user = digest(f"{username}:{challenge.realm}") if challenge.userhash else username
    parts = [
        f"username={_quote(shown_user)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
        f"response={_quote(response)}",
        f"algorithm={challenge.algorithm}",
    ]
    if qop or session:
        parts.append(f"cnonce={_quote(cnonce)}")
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    if qop:
        parts.append(f"qop={qop}")
        parts.append(f"nc={nc_text}")
    if challenge.userhash:
        parts.append("userhash=true")
    return "Digest " + ", ".join(parts)


@dataclass
class _RealmState:
    challenge: DigestChallenge
    cnonce: str
    nc: int = 0
    # Set when we answered a challenge and have not yet heard that the answer worked.
    awaiting_verdict: bool = False
    answered_nonces: set[str] = field(default_factory=set)
    stale_answers: int = 0  # stale re-challenges answered since the last success


class DigestClient:
    """Answers 401/407 challenges for one set of credentials, remembering each realm.

    State is per (realm, is_proxy). After `respond` answers a challenge, a second non-stale
    challenge from that realm means the credentials were refused: `respond` returns None and
    `last_failure` says why. Call `accepted()` when an authenticated request gets a final
    response other than 401/407, so the next challenge (a later request) is answered afresh.
    """

    def __init__(
        self,
        username: str,
        password: str,
        *,
        cnonce_factory: Callable[[], str] = make_cnonce,
    ) -> None:
        self.username = username
        self._password = password
        self._cnonce_factory = cnonce_factory
        self._realms: dict[tuple[str, bool], _RealmState] = {}
        self._last_key: tuple[str, bool] | None = None
        self.last_failure: str | None = None

    def __repr__(self) -> str:  # never show the password
        return f"DigestClient(username={self.username!r}, realms={list(self._realms)})"

    def respond(
        self,
        status: int,
        challenge_values: list[str],
        method: str,
        uri: str,
        body: bytes = b"",
    ) -> tuple[str, str] | None:
        """(header name, value) answering a 401/407, or None to give up (see last_failure)."""
        if status not in (401, 407):
            return self._fail(f"status {status} is not an authentication challenge")
        is_proxy = status == 407
        try:
            challenge = choose_challenge(challenge_values, is_proxy)
        except AuthError as exc:
            return self._fail(str(exc))
        key = (challenge.realm, is_proxy)
        state = self._realms.get(key)
        if state is not None:
            refusal = self._refusal(state, challenge)
            if refusal is not None:
                # Forget the realm so a later request (a retry after backoff) starts afresh;
                # the request that got this challenge must be abandoned by the UA.
                del self._realms[key]
                return self._fail(refusal)
            if challenge.stale:
                state.stale_answers += 1
        if state is None or state.challenge.nonce != challenge.nonce:
            previous = state
            state = _RealmState(challenge=challenge, cnonce=self._cnonce_factory())
            if previous is not None:
                state.answered_nonces = previous.answered_nonces
                state.stale_answers = previous.stale_answers
            self._realms[key] = state
        else:
            state.challenge = challenge  # same nonce: keep cnonce and counting (RFC 7616 §3.4)
        header = self._answer(state, method, uri, body)
        if header is None:
            return None
        state.awaiting_verdict = True
        state.answered_nonces.add(challenge.nonce)
        self._last_key = key
        self.last_failure = None
        return header

    def authorize(
        self,
        method: str,
        uri: str,
        body: bytes = b"",
        *,
        realm: str | None = None,
        is_proxy: bool | None = None,
    ) -> tuple[str, str] | None:
        """Preemptive credentials for a later request, reusing the last nonce (nc + 1)."""
        candidates = [
            key
            for key in self._realms
            if (realm is None or key[0] == realm) and (is_proxy is None or key[1] == is_proxy)
        ]
        if not candidates:
            return None
        key = self._last_key if self._last_key in candidates else candidates[-1]
        return self._answer(self._realms[key], method, uri, body)

    def authorize_all(self, method: str, uri: str, body: bytes = b"") -> list[tuple[str, str]]:
        """Preemptive credentials for every realm we know (proxy and UAS alike)."""
        headers = []
        for state in list(self._realms.values()):
            header = self._answer(state, method, uri, body)
            if header is not None:
                headers.append(header)
        return headers

    def accepted(self) -> None:
        """The authenticated request succeeded: the next challenge is not a refusal."""
        for state in self._realms.values():
            state.awaiting_verdict = False
            state.answered_nonces.clear()
            state.stale_answers = 0

    def forget(self, realm: str, is_proxy: bool) -> None:
        """Drop what we know about one realm (e.g. after a failure the UA reported)."""
        self._realms.pop((realm, is_proxy), None)

    @staticmethod
    def _refusal(state: _RealmState, challenge: DigestChallenge) -> str | None:
        """Why a repeated challenge means giving up, or None to answer it."""
        realm = challenge.realm
        if challenge.stale:
            if state.stale_answers >= MAX_STALE_ANSWERS:
                return f"realm {realm!r} keeps answering stale=true"
            return None
        if challenge.nonce in state.answered_nonces:
            return f"credentials for realm {realm!r} were rejected (nonce challenged again)"
        if state.awaiting_verdict:
            return f"realm {realm!r} challenged again after our answer: credentials rejected"
        return None

    def _answer(
        self, state: _RealmState, method: str, uri: str, body: bytes
    ) -> tuple[str, str] | None:
        if state.nc >= 0xFFFFFFFF:
            return self._fail(f"nonce count exhausted for realm {state.challenge.realm!r}")
        state.nc += 1
        try:
            value = build_authorization(
                state.challenge,
                method=method,
                uri=uri,
                username=self.username,
                password=self._password,
                cnonce=state.cnonce,
                nc=state.nc,
                body=body,
            )
        except AuthError as exc:
            return self._fail(str(exc))
        name = "Proxy-Authorization" if state.challenge.is_proxy else "Authorization"
        return name, value

    def _fail(self, reason: str) -> None:
        """Record why we give up; always None so callers can `return self._fail(...)`."""
        self.last_failure = reason
        return None
