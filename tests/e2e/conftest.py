"""Fixtures for end-to-end calls: one Kamailio + agentd (dental example, 1.5B, temperature 0,
seed 42) per module, a baresip phone as the billing desk (3001), and a caller factory.

Everything here is `slow`; tests skip with a clear message when a binary or model is missing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.baresip import Baresip
from tests.harness.ports import PortAllocator

from .rig import DEFAULT_MODEL, AgentRig, missing_requirements

E2E_DIR = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentRig]:
    missing = missing_requirements(DEFAULT_MODEL)
    if missing:
        pytest.skip("end-to-end needs: " + "; ".join(missing))
    # debug: a failure message can then show what ASR heard and when each turn ended.
    live = AgentRig(tmp_path_factory.mktemp("e2e"), model=DEFAULT_MODEL, log_level="debug")
    live.start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def billing_phone(rig: AgentRig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Baresip]:
    """Extension 3001 (the dental policy's billing desk), auto-answering."""
    if shutil.which("baresip") is None:
        pytest.skip("baresip not installed (tools/test installs baresip-core)")
    ports = PortAllocator()
    phone = Baresip(tmp_path_factory.mktemp("phone3001"), "3001", registrar_port=rig.pbx_port,
                    sip_port=ports.port(), ctrl_port=ports.port(udp=False),
                    rtp_base=ports.port_range(20), tone_hz=440.0)
    phone.start()
    try:
        yield phone
    finally:
        phone.stop()
