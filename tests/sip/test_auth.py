"""Digest authentication: published vectors, parsing edge cases and the client's retry logic."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentd.sip.auth import (
    AuthError,
    DigestChallenge,
    DigestClient,
    build_authorization,
    choose_challenge,
    parse_challenge,
)

# ---------------------------------------------------------------- a tiny server-side verifier


def _parse_credentials(value: str) -> dict[str, str]:
    """Credentials params, parsed independently of the module under test."""
    assert value.startswith("Digest ")
    params: dict[str, str] = {}
    rest = value[len("Digest ") :]
    pos = 0
    while pos < len(rest):
        eq = rest.index("=", pos)
        name = rest[pos:eq].strip().lower()
        pos = eq + 1
        if rest[pos] == '"':
            out = []
            pos += 1
            while rest[pos] != '"':
                if rest[pos] == "\\":
                    pos += 1
                out.append(rest[pos])
                pos += 1
            pos += 1
            params[name] = "".join(out)
        else:
            end = rest.find(",", pos)
            end = len(rest) if end < 0 else end
            params[name] = rest[pos:end].strip()
            pos = end
        pos = rest.find(",", pos)
        pos = len(rest) if pos < 0 else pos + 1
        while pos < len(rest) and rest[pos] == " ":
            pos += 1
    return params


def _server_verifies(
    value: str, *, method: str, password: str, realm: str, nonce: str, body: bytes = b""
) -> bool:
    """Independent server-side check (written from RFC 7616 §3.4.1 without the module)."""
    p = _parse_credentials(value)
    algorithm = p.get("algorithm", "MD5")
    hash_name = "sha256" if algorithm.upper().startswith("SHA-256") else "md5"

    def h(data: str | bytes) -> str:
        raw = data.encode() if isinstance(data, str) else data
        return hashlib.new(hash_name, raw).hexdigest()

    if p["realm"] != realm or p["nonce"] != nonce:
        return False
    a1 = h(f"{p['username']}:{realm}:{password}")
    if algorithm.lower().endswith("-sess"):
        a1 = h(f"{a1}:{nonce}:{p['cnonce']}")
    qop = p.get("qop")
    a2 = f"{method}:{p['uri']}" + (f":{h(body)}" if qop == "auth-int" else "")
    if qop:
        expected = h(f"{a1}:{nonce}:{p['nc']}:{p['cnonce']}:{qop}:{h(a2)}")
    else:
        expected = h(f"{a1}:{nonce}:{h(a2)}")
    return expected == p["response"]


# ---------------------------------------------------------------- published test vectors

RFC2617_CHALLENGE = (
    'Digest realm="testrealm@host.com", qop="auth,auth-int", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)

RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


def _rfc7616_challenge(algorithm: str) -> str:
    return (
        'Digest\r\n    realm="http-auth@example.org",\r\n    qop="auth, auth-int",\r\n'
        f"    algorithm={algorithm},\r\n    nonce=\"{RFC7616_NONCE}\",\r\n"
        f'    opaque="{RFC7616_OPAQUE}"'
    )


def test_rfc2617_section_3_5_vector() -> None:
    challenge = parse_challenge(RFC2617_CHALLENGE)
    assert challenge.qop == ("auth", "auth-int")
    value = build_authorization(
        challenge, method="GET", uri="/dir/index.html", username="Mufasa",
        password="Circle Of Life", cnonce="0a4f113b", nc=1,
    )
    params = _parse_credentials(value)
    assert params["response"] == "6629fae49393a05397450978507c4ef1"
    assert params["qop"] == "auth" and params["nc"] == "00000001"
    assert params["opaque"] == "5ccc069c403ebaf9f0171e9517f40e41"
    # nc, qop and algorithm go unquoted; the rest quoted (RFC 7616 §3.4).
    assert "nc=00000001" in value and "qop=auth" in value and "algorithm=MD5" in value
    assert 'cnonce="0a4f113b"' in value and 'uri="/dir/index.html"' in value


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ],
)
def test_rfc7616_section_3_9_1_vectors(algorithm: str, expected: str) -> None:
    challenge = parse_challenge(_rfc7616_challenge(algorithm))
    assert challenge.algorithm == algorithm
    assert challenge.opaque == RFC7616_OPAQUE
    value = build_authorization(
        challenge, method="GET", uri="/dir/index.html", username="Mufasa",
        password="Circle of Life", cnonce=RFC7616_CNONCE, nc=1,
    )
    assert _parse_credentials(value)["response"] == expected
    assert f"algorithm={algorithm}," in value


# ---------------------------------------------------------------- build variants


@pytest.mark.parametrize(
    ("algorithm", "qop"),
    [
        ("MD5", None), ("MD5", "auth"), ("MD5-sess", "auth"), ("MD5-sess", "auth-int"),
        ("SHA-256", "auth-int"), ("SHA-256-sess", "auth"), ("SHA-256-sess", "auth-int"),
    ],
)
def test_round_trip_through_independent_verifier(algorithm: str, qop: str | None) -> None:
    body = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
    qop_param = f', qop="{qop}"' if qop else ""
    challenge = parse_challenge(
        f'Digest realm="pbx", nonce="n-123", algorithm={algorithm}{qop_param}'
    )
    value = build_authorization(
        challenge, method="INVITE", uri="sip:200@127.0.0.1", username="agent",
        password="s3cret", cnonce="c0ffee", nc=7, body=body,
    )
    assert _server_verifies(
        value, method="INVITE", password="s3cret", realm="pbx", nonce="n-123", body=body
    )
    assert not _server_verifies(
        value, method="INVITE", password="wrong", realm="pbx", nonce="n-123", body=body
    )
    if qop == "auth-int":  # the body is covered: a changed body fails verification
        assert not _server_verifies(
            value, method="INVITE", password="s3cret", realm="pbx", nonce="n-123",
            body=body + b"x",
        )


def test_md5_sess_known_value() -> None:
    # Computed by hand from RFC 2617 §3.2.2.2: HA1 = MD5(MD5(user:realm:pass):nonce:cnonce).
    challenge = parse_challenge(RFC2617_CHALLENGE.replace("Digest ", "Digest algorithm=MD5-sess, "))
    value = build_authorization(
        challenge, method="GET", uri="/dir/index.html", username="Mufasa",
        password="Circle Of Life", cnonce="0a4f113b", nc=1,
    )
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
    nonce = "dcd98b7102dd2f0e8b11d0f600bfb0c093"
    ha1 = md5(f"{md5('Mufasa:testrealm@host.com:Circle Of Life')}:{nonce}:0a4f113b")
    ha2 = md5("GET:/dir/index.html")
    assert _parse_credentials(value)["response"] == md5(
        f"{ha1}:{nonce}:00000001:0a4f113b:auth:{ha2}"
    )
    assert "algorithm=MD5-sess" in value


def test_no_qop_is_rfc2069_compatible() -> None:
    challenge = parse_challenge('Digest realm="testrealm@host.com", nonce="abc"')
    value = build_authorization(
        challenge, method="REGISTER", uri="sip:pbx", username="u", password="p",
        cnonce="", nc=1,
    )
    params = _parse_credentials(value)
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
    assert params["response"] == md5(
        f"{md5('u:testrealm@host.com:p')}:abc:{md5('REGISTER:sip:pbx')}"
    )
    assert "qop" not in params and "nc" not in params and "cnonce" not in params


def test_auth_int_used_only_when_offered_alone() -> None:
    both = parse_challenge('Digest realm="r", nonce="n", qop="auth-int,auth"')
    alone = parse_challenge('Digest realm="r", nonce="n", qop="auth-int"')
    kwargs = dict(method="BYE", uri="sip:x", username="u", password="p", cnonce="c", nc=1)
    assert "qop=auth," in build_authorization(both, **kwargs)
    assert "qop=auth-int," in build_authorization(alone, **kwargs)


def test_userhash_hides_username() -> None:
    challenge = parse_challenge(
        'Digest realm="r", nonce="n", qop=auth, userhash=true, algorithm=SHA-256'
    )
    value = build_authorization(
        challenge, method="REGISTER", uri="sip:r", username="Mufasa", password="p",
        cnonce="c", nc=1,
    )
    params = _parse_credentials(value)
    assert params["username"] == hashlib.sha256(b"Mufasa:r").hexdigest()
    assert params["userhash"] == "true"


def test_quotes_in_values_are_escaped_and_hashed_unescaped() -> None:
    challenge = parse_challenge(r'Digest realm="a \"quoted\" realm", nonce="n", qop="auth"')
    assert challenge.realm == 'a "quoted" realm'
    value = build_authorization(
        challenge, method="INVITE", uri="sip:x", username='us"er', password="p",
        cnonce="c", nc=1,
    )
    assert r'realm="a \"quoted\" realm"' in value and r'username="us\"er"' in value
    assert _server_verifies(value, method="INVITE", password="p", realm=challenge.realm, nonce="n")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(nc=0), dict(nc=2**32), dict(cnonce=""), dict(cnonce='a"b'), dict(username="a\r\nX: y"),
    ],
)
def test_bad_build_inputs_raise_auth_error(kwargs: dict) -> None:
    challenge = parse_challenge('Digest realm="r", nonce="n", qop="auth"')
    args = dict(method="INVITE", uri="sip:x", username="u", password="p", cnonce="c", nc=1)
    args.update(kwargs)
    with pytest.raises(AuthError):
        build_authorization(challenge, **args)


def test_unsupported_algorithm_or_qop_raises() -> None:
    kwargs = dict(method="INVITE", uri="sip:x", username="u", password="p", cnonce="c", nc=1)
    with pytest.raises(AuthError):
        build_authorization(
            parse_challenge('Digest realm="r", nonce="n", algorithm=SHA-512-256'), **kwargs
        )
    with pytest.raises(AuthError):
        build_authorization(
            parse_challenge('Digest realm="r", nonce="n", qop="auth-conf"'), **kwargs
        )


# ---------------------------------------------------------------- parsing edge cases


def test_parse_odd_case_spacing_and_quoted_commas() -> None:
    challenge = parse_challenge(
        '  dIgEsT   REALM = "a, b" ,NONCE="x,y=z"  ,  Algorithm=sha-256-SESS,'
        ' qop = "AUTH , auth-int", stale=TRUE, domain="sip:a sip:b", unknown="q,q", other=tok'
    )
    assert challenge == DigestChallenge(
        realm="a, b", nonce="x,y=z", algorithm="SHA-256-sess", qop=("auth", "auth-int"),
        stale=True, domain=("sip:a", "sip:b"),
    )


def test_parse_token_values_and_proxy_flag() -> None:
    challenge = parse_challenge("Digest realm=asterisk,nonce=1234abcd,algorithm=MD5", is_proxy=True)
    assert (challenge.realm, challenge.nonce, challenge.is_proxy) == ("asterisk", "1234abcd", True)
    assert challenge.qop == () and challenge.opaque is None and not challenge.stale


def test_parse_stops_at_a_second_scheme() -> None:
    challenge = parse_challenge('Digest realm="r", nonce="n", Basic realm="other"')
    assert challenge.realm == "r"


def test_empty_realm_is_allowed_but_missing_is_not() -> None:
    assert parse_challenge('Digest realm="", nonce="n"').realm == ""


@pytest.mark.parametrize(
    "value",
    [
        'Basic realm="r"',
        'Bearer realm="r"',
        "",
        "Digest",
        'Digest nonce="n"',
        'Digest realm="r"',
        'Digest realm="r", nonce=""',
        'Digest realm="r, nonce="n"',
        'Digestrealm="r", nonce="n"',
        'Digest realm="r", @nonce="n"',
    ],
)
def test_parse_rejects(value: str) -> None:
    with pytest.raises(AuthError):
        parse_challenge(value)


@given(st.text(max_size=200))
def test_parse_never_raises_anything_but_auth_error(value: str) -> None:
    try:
        parse_challenge(value)
    except AuthError:
        pass
    try:
        parse_challenge("Digest " + value)
    except AuthError:
        pass


# ---------------------------------------------------------------- choosing among challenges


def test_choose_prefers_sha256_over_md5_regardless_of_order() -> None:
    values = [
        'Digest realm="r", nonce="n1", algorithm=MD5, qop="auth"',
        'Digest realm="r", nonce="n2", algorithm=SHA-256, qop="auth"',
    ]
    assert choose_challenge(values, is_proxy=False).nonce == "n2"
    assert choose_challenge(list(reversed(values)), is_proxy=True).nonce == "n2"
    assert choose_challenge(values, is_proxy=True).is_proxy


def test_choose_skips_unsupported_and_other_schemes() -> None:
    values = [
        'Basic realm="r"',
        'Digest realm="r", nonce="n0", algorithm=SHA-512-256, qop="auth"',
        "garbage ,,,",
        'Digest realm="r", nonce="n1", qop="auth"',
    ]
    assert choose_challenge(values).nonce == "n1"
    with pytest.raises(AuthError):
        choose_challenge(values[:3])
    with pytest.raises(AuthError):
        choose_challenge([])


# ---------------------------------------------------------------- DigestClient


def _client(user: str = "1001", password: str = "pw") -> DigestClient:
    numbers = itertools.count(1)
    return DigestClient(user, password, cnonce_factory=lambda: f"cn{next(numbers)}")


def _challenge(nonce: str, realm: str = "pbx", extra: str = "") -> str:
    return f'Digest realm="{realm}", nonce="{nonce}", qop="auth", algorithm=MD5{extra}'


def test_client_answers_401_with_authorization_and_407_with_proxy_authorization() -> None:
    client = _client()
    name, value = client.respond(401, [_challenge("n1")], "REGISTER", "sip:pbx")
    assert name == "Authorization"
    assert _server_verifies(value, method="REGISTER", password="pw", realm="pbx", nonce="n1")
    name, value = client.respond(407, [_challenge("p1", realm="proxy")], "INVITE", "sip:200@pbx")
    assert name == "Proxy-Authorization"
    assert _server_verifies(value, method="INVITE", password="pw", realm="proxy", nonce="p1")
    assert client.last_failure is None


def test_client_gives_up_when_same_nonce_challenged_again() -> None:
    client = _client()
    assert client.respond(401, [_challenge("n1")], "REGISTER", "sip:pbx") is not None
    assert client.respond(401, [_challenge("n1")], "REGISTER", "sip:pbx") is None
    assert "rejected" in (client.last_failure or "")


def test_client_gives_up_when_fresh_nonce_without_stale_follows_our_answer() -> None:
    # Kamailio-style: a wrong password gets a brand-new nonce, stale absent.
    client = _client()
    assert client.respond(401, [_challenge("n1")], "REGISTER", "sip:pbx") is not None
    assert client.respond(401, [_challenge("n2")], "REGISTER", "sip:pbx") is None
    assert client.last_failure
    # After giving up the realm is forgotten: a later retry is answered afresh.
    assert client.respond(401, [_challenge("n3")], "REGISTER", "sip:pbx") is not None


def test_stale_rechallenge_is_answered_with_new_nonce_and_is_not_a_failure() -> None:
    client = _client()
    _, first = client.respond(401, [_challenge("n1")], "REGISTER", "sip:pbx")
    result = client.respond(401, [_challenge("n2", extra=", stale=true")], "REGISTER", "sip:pbx")
    assert result is not None and client.last_failure is None
    params = _parse_credentials(result[1])
    assert params["nonce"] == "n2" and params["nc"] == "00000001"
    assert params["cnonce"] != _parse_credentials(first)["cnonce"]
    # The answer to the stale challenge is itself judged: a non-stale repeat is a refusal.
    assert client.respond(401, [_challenge("n3")], "REGISTER", "sip:pbx") is None


def test_endless_stale_is_bounded() -> None:
    client = _client()
    results = [
        client.respond(401, [_challenge(f"n{i}", extra=", stale=true")], "REGISTER", "sip:pbx")
        for i in range(10)
    ]
    assert results[0] is not None and None in results
    assert "stale" in (client.last_failure or "")


def test_preemptive_authorize_reuses_nonce_and_increments_nc() -> None:
    client = _client()
    assert client.authorize("INVITE", "sip:200@pbx") is None  # nothing learnt yet
    client.respond(401, [_challenge("n1")], "REGISTER", "sip:pbx")
    client.accepted()
    for expected_nc in ("00000002", "00000003"):
        name, value = client.authorize("INVITE", "sip:200@pbx")
        params = _parse_credentials(value)
        assert name == "Authorization"
        assert (params["nonce"], params["nc"], params["cnonce"]) == ("n1", expected_nc, "cn1")
        assert _server_verifies(value, method="INVITE", password="pw", realm="pbx", nonce="n1")
    assert client.authorize("INVITE", "sip:x", realm="elsewhere") is None


def test_accepted_lets_a_later_request_be_challenged_afresh() -> None:
    client = _client()
    client.respond(401, [_challenge("n1")], "REGISTER", "sip:pbx")
    client.accepted()  # 200 OK to REGISTER
    # Asterisk challenges each INVITE with a new nonce: that is not a refusal.
    result = client.respond(401, [_challenge("n2")], "INVITE", "sip:200@pbx")
    assert result is not None and "nc=00000001" in result[1]


def test_rechallenge_with_reused_nonce_counts_up() -> None:
    client = _client()
    client.respond(401, [_challenge("n1")], "REGISTER", "sip:pbx")
    client.accepted()
    _, value = client.respond(401, [_challenge("n1")], "BYE", "sip:200@pbx")
    assert "nc=00000002" in value


def test_proxy_and_www_state_are_separate() -> None:
    client = _client()
    client.respond(407, [_challenge("p1", realm="pbx")], "INVITE", "sip:200@pbx")
    client.respond(401, [_challenge("w1", realm="pbx")], "INVITE", "sip:200@pbx")
    headers = dict(client.authorize_all("REFER", "sip:200@pbx"))
    assert set(headers) == {"Authorization", "Proxy-Authorization"}
    assert 'nonce="p1"' in headers["Proxy-Authorization"]
    assert 'nonce="w1"' in headers["Authorization"]
    name, _ = client.authorize("REFER", "sip:200@pbx", is_proxy=True)
    assert name == "Proxy-Authorization"


def test_client_gives_up_on_unusable_input() -> None:
    client = _client()
    assert client.respond(401, ['Basic realm="x"'], "REGISTER", "sip:pbx") is None
    assert "scheme" in (client.last_failure or "")
    assert client.respond(401, [], "REGISTER", "sip:pbx") is None
    assert client.respond(200, [_challenge("n")], "REGISTER", "sip:pbx") is None


def test_client_repr_hides_password() -> None:
    assert "pw" not in repr(_client(password="pw"))
