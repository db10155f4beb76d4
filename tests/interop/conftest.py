"""Fixtures for interop tests: a real Kamailio and baresip phones on loopback.

Everything in tests/interop is marked `slow`. Tests skip with a clear message when the
third-party binaries are missing (dev boxes); tools/test installs them for CI.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.baresip import Baresip
from tests.harness.kamailio import Kamailio
from tests.harness.ports import PortAllocator

INTEROP_DIR = Path(__file__).parent
KAMAILIO_BINARIES = ("kamailio", "kamcmd")
BARESIP_BINARIES = ("baresip",)
SIPP_BINARIES = ("sipp",)

PhoneFactory = Callable[..., Baresip]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEROP_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)


def require_binaries(*names: str) -> None:
    """Skip the test when a third-party binary is not installed."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        pytest.skip(f"interop binaries not installed: {', '.join(missing)} "
                    "(tools/test installs them: kamailio, baresip-core, sip-tester)")


@pytest.fixture(scope="session")
def port_allocator() -> PortAllocator:
    """Hands out loopback ports no other fixture or test in this run got."""
    return PortAllocator()


@pytest.fixture
def kamailio(tmp_path: Path, port_allocator: PortAllocator) -> Iterator[Kamailio]:
    """A started Kamailio PBX on a free 127.0.0.1 port (UDP+TCP), no sipdump."""
    require_binaries(*KAMAILIO_BINARIES)
    pbx = Kamailio(tmp_path / "kamailio", port_allocator.port())
    try:
        pbx.start()
        yield pbx
    finally:
        pbx.close()


@pytest.fixture
def sipp_available() -> None:
    """Skips the test when SIPp is not installed."""
    require_binaries(*SIPP_BINARIES)


@pytest.fixture
def phone_factory(tmp_path: Path, kamailio: Kamailio,
                  port_allocator: PortAllocator) -> Iterator[PhoneFactory]:
    """make(extension, tone_hz=440.0, register=True, **Baresip kwargs) -> started phone.

    Phones register at the `kamailio` fixture and are stopped at teardown.
    """
    require_binaries(*BARESIP_BINARIES)
    phones: list[Baresip] = []

    def make(extension: str, *, tone_hz: float = 440.0, register: bool = True,
             **kwargs: object) -> Baresip:
        phone = Baresip(
            tmp_path / f"phone{extension}-{len(phones)}", extension,
            registrar_port=kamailio.port, sip_port=port_allocator.port(),
            ctrl_port=port_allocator.port(udp=False),
            rtp_base=port_allocator.port_range(20), tone_hz=tone_hz, **kwargs)  # type: ignore[arg-type]
        phones.append(phone)
        return phone.start(wait_registration=register)

    try:
        yield make
    finally:
        for phone in phones:
            phone.stop()
