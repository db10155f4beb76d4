"""Registration state machine (RFC 3261 §10), sans-IO: what REGISTER goes out and when."""

from __future__ import annotations

import hashlib
import re

import pytest

from agentd.sip.auth import DigestClient
from agentd.sip.message import Headers, SipRequest, SipResponse
from agentd.sip.registration import (
    Registration,
    RegistrationConfig,
    RegistrationStatus,
)

AOR = "sip:2001@pbx.example"
REGISTRAR = "sip:pbx.example"
CONTACT = "<sip:2001@192.0.2.10:5060>"
PASSWORD = "s3cret"


def config(**overrides: object) -> RegistrationConfig:
    values: dict[str, object] = dict(
        aor=AOR, registrar_uri=REGISTRAR, contact=CONTACT, call_id="reg-1@agentd",
        from_tag="ft1", expires=300, backoff_min=2.0, backoff_max=60.0, max_refresh=300.0,
    )
    values.update(overrides)
    return RegistrationConfig(**values)  # type: ignore[arg-type]


def credentials(password: str = PASSWORD) -> DigestClient:
    return DigestClient("2001", password, cnonce_factory=lambda: "cn0nce")


def reply(request: SipRequest, status: int, reason: str = "",
          headers: list[tuple[str, str]] | None = None) -> SipResponse:
    fields = Headers([(n, v) for n, v in request.headers
                      if n in ("Via", "From", "To", "Call-ID", "CSeq")])
    for name, value in headers or []:
        fields.add(name, value)
    return SipResponse(status, reason or {200: "OK", 401: "Unauthorized"}.get(status, "X"), fields)


def challenge(nonce: str = "n1") -> tuple[str, str]:
    return ("WWW-Authenticate", f'Digest realm="pbx", nonce="{nonce}", qop="auth", algorithm=MD5')


def digest_params(value: str) -> dict[str, str]:
    return {k: v1 or v2 for k, v1, v2 in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]+))', value)}


def expected_response(params: dict[str, str], method: str, password: str) -> str:
    """RFC 2617 qop=auth response, computed here independently of auth.py."""
    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = md5(f"{params['username']}:{params['realm']}:{password}")
    ha2 = md5(f"{method}:{params['uri']}")
    return md5(f"{ha1}:{params['nonce']}:{params['nc']}:{params['cnonce']}:auth:{ha2}")


def cseq_number(request: SipRequest) -> int:
    cseq = request.cseq
    assert cseq is not None and cseq[1] == "REGISTER"
    return cseq[0]


def test_first_register_fields() -> None:
    reg = Registration(config(), credentials())
    assert reg.state.status is RegistrationStatus.UNREGISTERED
    request = reg.start(0.0)
    assert request.method == "REGISTER" and request.uri == REGISTRAR
    h = request.headers
    assert h.get("To") == f"<{AOR}>"
    assert h.get("From") == f"<{AOR}>;tag=ft1"
    assert h.get("Call-ID") == "reg-1@agentd"
    assert h.get("Contact") == CONTACT
    assert h.get("Expires") == "300"
    assert h.get("Authorization") is None  # nothing known yet: no preemptive credentials
    assert reg.state.status is RegistrationStatus.REGISTERING
    assert reg.in_flight and reg.next_deadline() is None


def test_401_then_authorised_retry_then_registered() -> None:
    reg = Registration(config(), credentials())
    first = reg.start(0.0)
    retry = reg.handle_response(reply(first, 401, headers=[challenge()]), 0.1)
    assert retry is not None
    # Same Call-ID, CSeq one higher (RFC 3261 §10.2.4).
    assert retry.headers.get("Call-ID") == first.headers.get("Call-ID")
    assert cseq_number(retry) == cseq_number(first) + 1
    auth = retry.headers.get("Authorization")
    assert auth is not None and auth.startswith("Digest ")
    params = digest_params(auth)
    assert params["username"] == "2001" and params["realm"] == "pbx"
    assert params["uri"] == REGISTRAR and params["nonce"] == "n1"
    assert params["response"] == expected_response(params, "REGISTER", PASSWORD)

    assert reg.handle_response(reply(retry, 200, headers=[("Expires", "300")]), 0.2) is None
    state = reg.state
    assert state.status is RegistrationStatus.REGISTERED
    assert state.failures == 0 and state.reason is None
    assert state.expires_at == pytest.approx(300.2)
    assert state.retry_at is not None and 0.2 < state.retry_at < 300.2


def test_wrong_password_fails_with_reason_and_backs_off_exponentially() -> None:
    reg = Registration(config(backoff_min=2.0, backoff_max=60.0), credentials("wrong"))
    now = 0.0
    request = reg.start(now)
    delays = []
    sent = 1
    for round_no in range(8):
        # One round: the challenge is answered once, the second challenge is a refusal.
        retry = reg.handle_response(reply(request, 401, headers=[challenge(f"n{round_no}")]), now)
        assert retry is not None and retry.headers.get("Authorization") is not None
        sent += 1
        assert reg.handle_response(
            reply(retry, 401, headers=[challenge(f"n{round_no}b")]), now) is None
        state = reg.state
        assert state.status is RegistrationStatus.FAILING
        assert state.reason is not None and "401" in state.reason
        assert state.failures == round_no + 1
        assert state.retry_at is not None
        delays.append(state.retry_at - now)
        # Not a tight loop: nothing is due before the retry time.
        assert reg.poll(now) is None
        assert reg.poll(state.retry_at - 0.01) is None
        now = state.retry_at
        request = reg.poll(now)
        assert request is not None
        sent += 1
        assert reg.state.status is RegistrationStatus.REGISTERING
    assert delays == [2, 4, 8, 16, 32, 60, 60, 60]
    assert sent == 17  # two REGISTERs per round, never more


def test_backoff_stays_capped_after_very_many_failures() -> None:
    """A PBX down for days must not overflow the backoff arithmetic."""
    reg = Registration(config(backoff_min=2.0, backoff_max=300.0), None)
    now = 0.0
    request = reg.start(now)
    for _ in range(1500):
        reg.handle_timeout(now)
        retry_at = reg.state.retry_at
        assert retry_at is not None and 2.0 <= retry_at - now <= 300.0
        now = retry_at
        request = reg.poll(now)
        assert request is not None
    assert reg.state.failures == 1500
    assert reg.next_deadline() is None  # in flight
    reg.handle_timeout(now)
    assert reg.state.retry_at == pytest.approx(now + 300.0)


def test_423_raises_expires_to_min_expires() -> None:
    reg = Registration(config(expires=60), credentials())
    first = reg.start(0.0)
    retry = reg.handle_response(reply(first, 423, "Interval Too Brief",
                                      [("Min-Expires", "3600")]), 0.1)
    assert retry is not None and retry.headers.get("Expires") == "3600"
    assert cseq_number(retry) == cseq_number(first) + 1
    reg.handle_response(reply(retry, 200, headers=[("Expires", "3600")]), 0.2)
    assert reg.state.status is RegistrationStatus.REGISTERED
    refresh = reg.poll(reg.next_deadline() or 0.0)
    assert refresh is not None and refresh.headers.get("Expires") == "3600"


@pytest.mark.parametrize("min_expires", [None, "30", "abc", "60"])
def test_423_without_usable_min_expires_fails(min_expires: str | None) -> None:
    reg = Registration(config(expires=60), credentials())
    first = reg.start(0.0)
    headers = [("Min-Expires", min_expires)] if min_expires is not None else []
    assert reg.handle_response(reply(first, 423, "Interval Too Brief", headers), 0.1) is None
    assert reg.state.status is RegistrationStatus.FAILING
    assert "423" in (reg.state.reason or "")


@pytest.mark.parametrize(
    ("granted", "max_refresh", "refresh_after"),
    [(300, 300.0, 268.0), (60, 300.0, 30.0), (3600, 300.0, 300.0), (3600, 120.0, 120.0)],
)
def test_refresh_before_expiry_and_at_most_max_refresh(
    granted: int, max_refresh: float, refresh_after: float
) -> None:
    reg = Registration(config(expires=granted, max_refresh=max_refresh), None)
    first = reg.start(10.0)
    reg.handle_response(reply(first, 200, headers=[("Expires", str(granted))]), 10.0)
    deadline = reg.next_deadline()
    assert deadline == pytest.approx(10.0 + refresh_after)
    assert deadline < 10.0 + granted
    assert reg.poll(deadline - 0.001) is None
    refresh = reg.poll(deadline)
    assert refresh is not None and cseq_number(refresh) == cseq_number(first) + 1
    # A refresh leaves us REGISTERED (the binding is still good while it runs).
    assert reg.state.status is RegistrationStatus.REGISTERED


def test_expires_from_our_contact_param_beats_expires_header() -> None:
    reg = Registration(config(), None)
    first = reg.start(0.0)
    reg.handle_response(reply(first, 200, headers=[
        ("Contact", "<sip:2001@198.51.100.7:5062>;expires=3000"),  # another device's binding
        ("Contact", "<sip:2001@192.0.2.10;transport=udp>;expires=120"),  # ours (5060 implied)
        ("Expires", "600"),
    ]), 0.0)
    assert reg.state.expires_at == pytest.approx(120.0)


def test_expires_header_when_our_contact_has_no_param() -> None:
    reg = Registration(config(), None)
    first = reg.start(0.0)
    reg.handle_response(reply(first, 200, headers=[
        ("Contact", "<sip:2001@198.51.100.7:5062>;expires=3000"), ("Expires", "600")]), 0.0)
    assert reg.state.expires_at == pytest.approx(600.0)


def test_requested_expires_when_200_says_nothing() -> None:
    reg = Registration(config(expires=180), None)
    first = reg.start(0.0)
    reg.handle_response(reply(first, 200), 0.0)
    assert reg.state.expires_at == pytest.approx(180.0)


def test_200_granting_zero_is_a_failure() -> None:
    reg = Registration(config(), None)
    first = reg.start(0.0)
    reg.handle_response(reply(first, 200, headers=[("Expires", "0")]), 0.0)
    assert reg.state.status is RegistrationStatus.FAILING


def test_timeout_fails_and_retries_then_recovers() -> None:
    reg = Registration(config(), None)
    first = reg.start(0.0)
    reg.handle_timeout(32.0)
    state = reg.state
    assert state.status is RegistrationStatus.FAILING
    assert "timeout" in (state.reason or "")
    assert state.retry_at == pytest.approx(34.0)
    assert reg.poll(33.0) is None
    again = reg.poll(34.0)
    assert again is not None and cseq_number(again) > cseq_number(first)
    reg.handle_response(reply(again, 200), 34.1)
    assert reg.state.status is RegistrationStatus.REGISTERED
    assert reg.state.failures == 0


def test_server_error_fails_with_status_in_reason() -> None:
    reg = Registration(config(), credentials())
    first = reg.start(0.0)
    reg.handle_response(reply(first, 403, "Forbidden"), 0.0)
    assert reg.state.status is RegistrationStatus.FAILING
    assert reg.state.reason == "403 Forbidden"


def test_provisional_is_ignored() -> None:
    reg = Registration(config(), None)
    first = reg.start(0.0)
    assert reg.handle_response(reply(first, 100, "Trying"), 0.0) is None
    assert reg.in_flight and reg.state.status is RegistrationStatus.REGISTERING


def test_stop_sends_expires_zero_and_ends_unregistered() -> None:
    reg = Registration(config(), credentials())
    first = reg.start(0.0)
    retry = reg.handle_response(reply(first, 401, headers=[challenge()]), 0.0)
    assert retry is not None
    reg.handle_response(reply(retry, 200), 0.0)
    bye = reg.stop(5.0)
    assert bye is not None
    assert bye.headers.get("Expires") == "0"
    assert bye.headers.get("Contact") == CONTACT
    assert bye.headers.get("Authorization") is not None  # preemptive, same realm
    assert reg.state.status is RegistrationStatus.UNREGISTERING
    # A challenge to the un-REGISTER is answered, still with Expires: 0.
    again = reg.handle_response(reply(bye, 401, headers=[challenge("n2")]), 5.1)
    assert again is not None and again.headers.get("Expires") == "0"
    assert reg.handle_response(reply(again, 200), 5.2) is None
    assert reg.state.status is RegistrationStatus.UNREGISTERED
    assert reg.next_deadline() is None and reg.poll(1e9) is None


def test_stop_without_binding_sends_nothing() -> None:
    reg = Registration(config(), None)
    assert reg.stop(0.0) is None
    assert reg.state.status is RegistrationStatus.UNREGISTERED


def test_stop_timeout_ends_unregistered_without_retry() -> None:
    reg = Registration(config(), None)
    first = reg.start(0.0)
    reg.handle_response(reply(first, 200), 0.0)
    assert reg.stop(1.0) is not None
    reg.handle_timeout(33.0)
    assert reg.state.status is RegistrationStatus.UNREGISTERED
    assert reg.next_deadline() is None and reg.poll(1e9) is None


def test_stop_failure_does_not_schedule_a_retry() -> None:
    reg = Registration(config(), None)
    first = reg.start(0.0)
    reg.handle_response(reply(first, 200), 0.0)
    bye = reg.stop(1.0)
    assert bye is not None
    reg.handle_response(reply(bye, 500, "Server Error"), 1.1)
    assert reg.next_deadline() is None and reg.poll(1e9) is None
