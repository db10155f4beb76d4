"""The examples' stand-in CRM (examples/crm.py) answers the dental policy's real webhook tool
and its hand-off webhook, and reports what it was sent."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from examples.crm import CrmRequest, CrmStandIn
from tests.harness.ports import PortAllocator


def post(url: str, body: dict[str, object], token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, json.loads(response.read())


def test_confirmation_and_handoff_are_answered_and_reported() -> None:
    seen: list[CrmRequest] = []
    port = PortAllocator().port(udp=False)
    with CrmStandIn(port=port, token="t0k", on_request=seen.append) as crm:
        base = f"http://127.0.0.1:{crm.port}"
        status, answer = post(f"{base}/crm/appointments/4/confirm", {"appointment_id": "4"},
                              token="t0k")
        assert status == 200 and answer == {"ok": True, "sent": True, "appointment_id": "4"}
        status, answer = post(f"{base}/crm/handoff", {"reason": "insurance"})
        assert status == 200 and answer == {"ok": True}
        post(f"{base}/crm/leads", {"name": "x"}, token="wrong")
    assert [(r.path, r.token) for r in seen] == [
        ("/crm/appointments/4/confirm", True), ("/crm/handoff", None), ("/crm/leads", False)]
    assert seen[0].body == {"appointment_id": "4"} and crm.requests == seen


def test_the_dental_tool_reaches_it(tmp_path: Path) -> None:
    """The dental policy's send_confirmation webhook, built as the agent builds it."""
    from examples.crm import DEFAULT_PORT
    from tests.harness.ports import is_free

    if not is_free(DEFAULT_PORT, udp=False):
        pytest.skip(f"port {DEFAULT_PORT} (the examples' webhook address) is in use")
    from agentd.dialog.policy import load_policy
    from agentd.dialog.tools.registry import build_tools
    from agentd.dialog.types import ToolContext
    from examples import prepare

    policy = load_policy(prepare("dental", tmp_path))
    token = (tmp_path / "dental" / "secrets" / "crm-token").read_text().strip()
    seen: list[CrmRequest] = []
    context = ToolContext("+447700900102", "c1", "2026-11-24T10:00:00+00:00", {})
    with CrmStandIn(token=token, on_request=seen.append):
        tool = build_tools(policy)["send_confirmation"]
        result = tool.run({"appointment_id": "4"}, context)
    assert [(r.path, r.token) for r in seen] == [("/crm/appointments/4/confirm", True)]
    assert seen[0].body["caller"] == "+447700900102"
    assert result["status"] == 200 and result["response"]["sent"] is True
