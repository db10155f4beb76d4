"""The service lifecycle in-process: reload, per-call handlers, drain, goodbye, pid file."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from agentd.config import Config, load_config
from agentd.daemon import ua_settings
from agentd.service.lifecycle import Service, settings_changes
from agentd.service.notify import Notifier


def write(path: Path, **sip: Any) -> Path:
    document = {
        "sip": {"registrar": "127.0.0.1:5999", "extension": "2001", "password": "pw",
                "local_port": 0, **sip},
        "media": {"rtp_port_min": 30000, "rtp_port_max": 30040},
        "service": {"drain_seconds": 0.6, "goodbye_seconds": 0.5,
                    "pid_file": str(path.parent / "agentd.pid")},
    }
    path.write_text(yaml.safe_dump(document))
    return path


class Recorder:
    """A call handler that remembers which config built it."""

    def __init__(self, config: Config) -> None:
        self.max_calls = config.sip.max_calls
        self.goodbyes: list[str] = []
        self.closed = False

    async def __call__(self, leg: Any) -> None:
        await leg.ended.wait()

    async def say_goodbye(self, leg: Any) -> None:
        self.goodbyes.append(leg.reference)

    def close(self) -> None:
        self.closed = True


class FakeLeg:
    def __init__(self, ua: Any, reference: str) -> None:
        self.ua, self.reference = ua, reference
        self.ended = asyncio.Event()
        self.end_reason: str | None = None
        ua._legs[(reference, "tag")] = self

    async def hangup(self, reason: str = "normal") -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()
            self.ua._legs.pop((self.reference, "tag"), None)


def service(path: Path) -> Service:
    return Service(
        load_config(path), path, notifier=Notifier(None), environ={},
        build_settings=lambda c: replace(ua_settings(c), register=False),
        build_handler=Recorder,
    )


async def start(svc: Service) -> asyncio.Task[int]:
    task = asyncio.create_task(svc.run())
    for _ in range(200):
        if svc.ready:
            return task
        await asyncio.sleep(0.01)
    raise AssertionError("service never became ready")


async def test_reload_keeps_each_calls_handler_and_refuses_bad_files(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yaml", max_calls=4)
    svc = service(path)
    task = await start(svc)
    assert (tmp_path / "agentd.pid").is_file()
    first = svc.handler
    old_call = FakeLeg(svc.ua, "old")
    dispatch = asyncio.create_task(svc._dispatch_call(old_call))  # answered before reload
    await asyncio.sleep(0.01)
    write(path, max_calls=2)
    result = await svc.reload()
    assert result.applied and not result.reregistered
    assert svc.handler is not first and svc.handler.max_calls == 2
    assert svc.ua.settings.max_calls == 2
    assert svc._leg_handlers[id(old_call)] is first  # the call keeps what it started with
    # An invalid file: refused, old config and handler stay.
    path.write_text(path.read_text().replace("max_calls: 2", "max_calls: lots"))
    current = svc.handler
    refused = await svc.reload()
    assert not refused.applied and "sip.max_calls" in (refused.error or "")
    assert svc.handler is current and svc.config.sip.max_calls == 2
    # A changed listening port is kept as it was (needs a restart).
    write(path, max_calls=2, local_port=5077)
    moved = await svc.reload()
    assert moved.applied and moved.needs_restart == ("local_port",)
    assert svc.ua.settings.local_port == 0
    await old_call.hangup()
    await dispatch
    svc.request_stop()
    assert await asyncio.wait_for(task, 5) == 0
    assert first.closed and current.closed
    assert not (tmp_path / "agentd.pid").exists()


async def test_drain_lets_calls_end_then_says_goodbye(tmp_path: Path) -> None:
    svc = service(write(tmp_path / "config.yaml"))
    task = await start(svc)
    quick, slow = FakeLeg(svc.ua, "quick"), FakeLeg(svc.ua, "slow")
    calls = [asyncio.create_task(svc._dispatch_call(leg)) for leg in (quick, slow)]
    await asyncio.sleep(0.01)
    svc.request_stop()
    await asyncio.sleep(0.2)
    assert not svc.ua.accepting  # new INVITEs now get 486
    await quick.hangup("remote hangup")  # ends by itself during the drain
    code = await asyncio.wait_for(task, 5)
    assert code == 0
    assert quick.end_reason == "remote hangup"
    assert slow.end_reason == "shutdown"
    handler = svc.handler
    assert handler.goodbyes == ["slow"]
    await asyncio.gather(*calls)


async def test_second_stop_skips_drain_and_goodbye(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yaml")
    path.write_text(path.read_text().replace("drain_seconds: 0.6", "drain_seconds: 60"))
    svc = service(path)
    task = await start(svc)
    leg = FakeLeg(svc.ua, "long")
    call = asyncio.create_task(svc._dispatch_call(leg))
    await asyncio.sleep(0.01)
    svc.request_stop()
    await asyncio.sleep(0.1)
    svc.request_stop()
    assert await asyncio.wait_for(task, 5) == 0
    assert leg.end_reason == "shutdown" and svc.handler.goodbyes == []
    await call


def test_settings_changes_split_listening_and_account(tmp_path: Path) -> None:
    old = ua_settings(load_config(write(tmp_path / "a.yaml")))
    new = replace(old, local_port=5070, password="other", max_calls=1)
    listen, account = settings_changes(old, new)
    assert listen == {"local_port"} and account == {"password"}
