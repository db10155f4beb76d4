"""The service's life: start-up, readiness, reload (SIGHUP) and drain/shutdown (SIGTERM).

    exit_code = run_service(config, "/etc/agentd/config.yaml")

Start-up: umask 077, logging, the call handler built from the config (this is where a
handler loads its models), the SIP user agent, the pid file; READY=1 only once the
extension is registered. STATUS= shows registration and active calls; WATCHDOG=1 is sent
from the event loop at half of $WATCHDOG_USEC, so a hung loop is restarted by systemd.

Reload (SIGHUP): the config file (and the policy it names) is read again off the loop; an
invalid file is refused, logged, and the old config stays. A good one applies at once to
new calls; each call keeps the handler (policy) it started with. A changed SIP account
re-registers; a changed listening address/port/transport needs a restart (logged).

Shutdown (SIGTERM/SIGINT): new INVITEs get 486; calls in progress may go on for
`service.drain_seconds`; then each gets its goodbye line (when the handler has
`say_goodbye(leg)`) and BYE; un-REGISTER; handlers with `aclose()`/`close()` flush (records);
exit 0. A second signal skips the rest of the drain and the goodbyes (BYE still goes out,
bounded to about a second); a third exits on the spot.

Handler hooks (all optional, found with getattr): `say_goodbye(leg) -> Awaitable`,
`aclose() -> Awaitable` or `close()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agentd.config import Config, ConfigError, load_config
from agentd.service.logging import config_secrets, log_context, setup_logging
from agentd.service.notify import Notifier, watchdog_interval
from agentd.sip.registration import RegistrationState, RegistrationStatus
from agentd.sip.ua import CallLeg, UaSettings, UserAgent

log = logging.getLogger("agentd.service")

CallHandler = Callable[[CallLeg], Awaitable[None]]
# What a reload cannot change without dropping the socket (and so every call on it).
LISTEN_FIELDS = ("local_host", "local_port", "transport")
# What makes the registration itself different: re-REGISTER when one of these changes.
ACCOUNT_FIELDS = (
    "extension", "registrar", "domain", "auth_user", "password", "register_expires",
    "registration_max_refresh", "display_name", "user_agent",
)
STATUS_POLL_S = 0.5
FORCED_STOP_S = 1.0


@dataclass(frozen=True)
class ReloadResult:
    """What one reload did: `error` set when it was refused (old config kept)."""

    applied: bool
    error: str | None = None
    reregistered: bool = False
    needs_restart: tuple[str, ...] = ()


def settings_changes(old: UaSettings, new: UaSettings) -> tuple[set[str], set[str]]:
    """(changed listening fields, changed account fields) between two settings."""
    listen = {name for name in LISTEN_FIELDS if getattr(old, name) != getattr(new, name)}
    account = {name for name in ACCOUNT_FIELDS if getattr(old, name) != getattr(new, name)}
    return listen, account


def default_pid_file(config: Config, environ: Mapping[str, str]) -> Path | None:
    """service.pid_file, else $RUNTIME_DIRECTORY/agentd.pid under systemd, else None."""
    if config.service.pid_file is not None:
        return config.service.pid_file
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(runtime) / "agentd.pid" if runtime else None


def _daemon_parts() -> tuple[Callable[[Config], UaSettings], Callable[[Config], Any]]:
    # agentd.handlers owns the choice of call handler (line test or the AI call loop) and
    # the resources handlers share across reloads (models, records, metrics).
    from agentd.daemon import ua_settings
    from agentd.handlers import CallHandlers

    return ua_settings, CallHandlers().build


class Service:
    """One run of the daemon: owns the user agent, the current handler and signals."""

    def __init__(
        self,
        config: Config,
        config_path: str | Path | None = None,
        *,
        notifier: Notifier | None = None,
        environ: Mapping[str, str] | None = None,
        build_settings: Callable[[Config], UaSettings] | None = None,
        build_handler: Callable[[Config], CallHandler] | None = None,
    ) -> None:
        self.config = config
        self.config_path = Path(config_path) if config_path is not None else None
        self.environ = dict(os.environ if environ is None else environ)
        self.notifier = notifier or Notifier.from_environment(self.environ)
        if build_settings is None or build_handler is None:
            default_settings, default_handler = _daemon_parts()
            build_settings = build_settings or default_settings
            build_handler = build_handler or default_handler
        self._build_settings = build_settings
        self._build_handler = build_handler
        self.ua: UserAgent | None = None
        self.handler: CallHandler | None = None
        self.pid_file: Path | None = None
        self.ready = False
        self.reloads = 0
        self._handlers_seen: list[Any] = []
        self._leg_handlers: dict[int, CallHandler] = {}
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._registered = asyncio.Event()
        self._signals = 0
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_status = ""

    # ---- public control (signals call these) ---------------------------------------------

    def request_stop(self) -> None:
        """First call: drain and stop. Second: stop now. Third: exit on the spot."""
        self._signals += 1
        if self._signals == 1:
            log.info("stop requested: refusing new calls, draining up to %.0f s",
                     self.config.service.drain_seconds)
            self._stop.set()
        elif self._signals == 2:
            log.warning("second stop request: ending calls now")
            self._force.set()
            self._stop.set()
        else:
            log.error("third stop request: exiting immediately")
            logging.shutdown()
            os._exit(1)

    def request_reload(self) -> None:
        self._spawn(self.reload(), "reload")

    async def reload(self) -> ReloadResult:
        """Re-read the config file; refuse it (keeping the old one) when it is invalid."""
        async with self._reload_lock:
            return await self._reload()

    # ---- running ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> int:
        """Serve until stopped; the process exit status."""
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        if stop is not None:
            self._spawn(self._follow(stop), "external-stop")
        self._status("loading")
        try:
            self.handler = self._build_handler(self.config)
        except Exception as exc:  # a model that will not load: say why, exit non-zero
            log.error("cannot start the call handler: %s", exc, exc_info=True)
            self.notifier.status(f"failed: {exc}")
            return 1
        self._handlers_seen.append(self.handler)
        ua = UserAgent(
            self._build_settings(self.config),
            self._dispatch_call,
            on_registration=self._on_registration,
        )
        self.ua = ua
        attach = getattr(getattr(self._build_handler, "__self__", None), "attach", None)
        if attach is not None:  # the handler factory exports the UA's metrics
            attach(ua)
        try:
            await ua.start()
        except OSError as exc:
            log.error("cannot listen on %s:%s: %s", self.config.sip.local_address,
                      self.config.sip.local_port, exc)
            self.notifier.status(f"failed: cannot listen: {exc}")
            return 1
        self._write_pid_file()
        # Start-up objects (config, models, modules) never die: keep them out of the garbage
        # collector's full passes, which otherwise stall the media clock for 10+ ms.
        gc.freeze()
        host, port = ua.local_address
        log.info("agentd listening on %s:%s (%s), registering %s at %s:%s", host, port,
                 ua.settings.transport, ua.aor, *ua.settings.registrar)
        started = time.monotonic()
        interval = watchdog_interval(self.environ, os.getpid())
        if interval is not None and self.notifier.enabled:
            self._spawn(self._watchdog(interval), "watchdog")
        self._spawn(self._status_loop(), "status")
        if not ua.settings.register:
            self._registered.set()  # nothing to wait for (tests, registrar-less set-ups)
        await self._wait_first(self._registered, self._stop)
        if not self._stop.is_set():
            self.ready = True
            self.notifier.ready(self._status_text())
            log.info("ready: registered as %s", ua.aor)
        await self._stop.wait()
        code = await self._shutdown()
        log.info("stopped after %.0f s", time.monotonic() - started)
        return code

    # ---- calls -----------------------------------------------------------------------------

    async def _dispatch_call(self, leg: CallLeg) -> None:
        # The handler in force when the call is answered stays the call's handler, so a
        # reload never changes the policy under a caller's feet.
        handler = self.handler
        assert handler is not None
        self._leg_handlers[id(leg)] = handler
        try:
            with log_context(call=leg.reference):
                await handler(leg)
        finally:
            self._leg_handlers.pop(id(leg), None)

    async def _end_politely(self, leg: CallLeg, goodbye: bool) -> None:
        handler = self._leg_handlers.get(id(leg))
        say_goodbye = getattr(handler, "say_goodbye", None)
        if goodbye and say_goodbye is not None and not leg.ended.is_set():
            try:
                await asyncio.wait_for(say_goodbye(leg), self.config.service.goodbye_seconds)
            except Exception as exc:  # noqa: BLE001 - a goodbye that fails still hangs up
                log.warning("call %s: goodbye failed: %s", leg.reference, exc)
        await leg.hangup("shutdown")

    # ---- reload ----------------------------------------------------------------------------

    async def _reload(self) -> ReloadResult:
        self.reloads += 1
        if self.config_path is None:
            log.warning("reload: no config file to re-read")
            return ReloadResult(False, "no config file")
        self.notifier.reloading(time.monotonic_ns() // 1000)
        log.info("reloading %s", self.config_path)
        loop = asyncio.get_running_loop()
        try:
            new = await loop.run_in_executor(None, load_config, self.config_path)
            # Building may load models: off the event loop, so live calls keep their audio.
            handler = await loop.run_in_executor(None, self._build_handler, new)
            settings = self._build_settings(new)
        except ConfigError as exc:
            return self._refuse(f"{len(exc.errors)} problem(s)", [str(e) for e in exc.errors])
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old config
            return self._refuse(str(exc), [])
        ua = self.ua
        needs_restart: tuple[str, ...] = ()
        reregistered = False
        if ua is not None:
            listen, account = settings_changes(ua.settings, settings)
            if listen:
                needs_restart = tuple(sorted(listen))
                log.warning("reload: %s changed; that takes a restart (kept the old value)",
                            ", ".join(needs_restart))
                settings = replace(settings, **{name: getattr(ua.settings, name)
                                                for name in listen})
            if account:
                await reregister(ua, settings)
                reregistered = True
                log.info("reload: SIP account changed (%s): registering again",
                         ", ".join(sorted(account - {"password"}) or ["password"]))
            else:
                ua.settings = settings
        self.config = new
        self.handler = handler
        self._handlers_seen.append(handler)
        setup_logging(new.log.level, new.log.format, secrets=config_secrets(new))
        log.info("reload done: new calls use the new config; %d call(s) in progress keep "
                 "theirs", len(ua.legs) if ua else 0)
        self.notifier.ready(self._status_text())
        return ReloadResult(True, reregistered=reregistered, needs_restart=needs_restart)

    def _refuse(self, summary: str, details: list[str]) -> ReloadResult:
        log.error("reload refused, keeping the running config: %s", summary)
        for line in details:
            log.error("reload refused: %s", line)
        self.notifier.ready(self._status_text() + f" (last reload refused: {summary})")
        return ReloadResult(False, "\n".join(details) or summary)

    # ---- shutdown --------------------------------------------------------------------------

    async def _shutdown(self) -> int:
        ua = self.ua
        assert ua is not None
        ua.accepting = False
        self.notifier.stopping(f"stopping: {len(ua.legs)} call(s) in progress")
        deadline = time.monotonic() + self.config.service.drain_seconds
        # Bounded: ends at the deadline, when the calls are over, or on a second signal.
        while ua.legs and not self._force.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._force.wait(), min(left, 0.1))
        legs = ua.legs
        if legs:
            forced = self._force.is_set()
            log.info("ending %d call(s)%s", len(legs),
                     " now" if forced else " (drain time is up)")
            ending = asyncio.gather(*(self._end_politely(leg, not forced) for leg in legs),
                                    return_exceptions=True)
            limit = FORCED_STOP_S if forced else self.config.service.goodbye_seconds + 9.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ending, limit)
        try:
            await asyncio.wait_for(ua.stop(), FORCED_STOP_S if self._force.is_set() else 10.0)
        except TimeoutError:
            log.warning("user agent did not stop in time")
        await self._close_handlers()
        for task in list(self._tasks):
            task.cancel()
        self._remove_pid_file()
        self.notifier.close()
        return 0

    async def _close_handlers(self) -> None:
        for handler in self._handlers_seen:
            try:
                aclose = getattr(handler, "aclose", None)
                if aclose is not None:
                    await asyncio.wait_for(aclose(), 5.0)
                    continue
                close = getattr(handler, "close", None)
                if close is not None:
                    close()
            except Exception as exc:  # noqa: BLE001 - closing the rest matters more
                log.warning("closing the call handler failed: %s", exc)

    # ---- status, watchdog, signals ---------------------------------------------------------

    def _on_registration(self, state: RegistrationState) -> None:
        if state.status is RegistrationStatus.REGISTERED:
            self._registered.set()
        self._publish_status()

    def _status_text(self) -> str:
        ua = self.ua
        if ua is None:
            return "starting"
        state = ua.registration_state
        host, port = ua.settings.registrar
        reg = f"{state.status.value} as {ua.settings.extension} at {host}:{port}"
        if state.reason and state.status is not RegistrationStatus.REGISTERED:
            reg += f" ({state.reason})"
        calls = len(ua.legs)
        text = f"{reg}; {calls} active call{'' if calls == 1 else 's'}"
        if not ua.accepting:
            text = "stopping: " + text
        return text

    def _status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self.notifier.status(text)

    def _publish_status(self) -> None:
        self._status(self._status_text())

    async def _status_loop(self) -> None:
        while True:
            self._publish_status()
            await asyncio.sleep(STATUS_POLL_S)

    async def _watchdog(self, interval: float) -> None:
        # From the event loop on purpose: if the loop hangs, the pings stop.
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig, action in ((signal.SIGTERM, self.request_stop), (signal.SIGINT, self.request_stop),
                            (signal.SIGHUP, self.request_reload)):
            try:
                loop.add_signal_handler(sig, action)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (tests): control through the methods instead

    async def _follow(self, stop: asyncio.Event) -> None:
        await stop.wait()
        if not self._stop.is_set():
            self.request_stop()

    async def _wait_first(self, *events: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    # ---- pid file --------------------------------------------------------------------------

    def _write_pid_file(self) -> None:
        path = default_pid_file(self.config, self.environ)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}")
            temporary.write_text(f"{os.getpid()}\n")
            temporary.replace(path)
            self.pid_file = path
        except OSError as exc:
            log.warning("cannot write pid file %s: %s", path, exc)

    def _remove_pid_file(self) -> None:
        if self.pid_file is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if int(self.pid_file.read_text().strip()) == os.getpid():
                self.pid_file.unlink()


async def reregister(ua: UserAgent, settings: UaSettings) -> None:
    """Un-REGISTER the old account, switch `ua` to `settings`, REGISTER the new one."""
    await ua.reregister(settings)


def prepare_process() -> None:
    """Process-wide start-up settings: files we write are the service user's alone."""
    os.umask(0o077)


def run_service(config: Config, config_path: str | Path | None = None) -> int:
    """`agentd run`: set up the process, serve until stopped; the exit status."""
    prepare_process()
    setup_logging(config.log.level, config.log.format, secrets=config_secrets(config))
    return asyncio.run(Service(config, config_path).run())


def _log_failure(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("service task %s failed: %s", task.get_name(), exc, exc_info=exc)
