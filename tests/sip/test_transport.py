"""SipTransport on loopback: UDP datagrams, TCP framing and reuse, admission, clean close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agentd.sip.message import SipRequest
from agentd.sip.parser import SipParseError
from agentd.sip.transport import Inbound, SipTransport
from tests.sip.peer import UdpSocket

pytestmark = pytest.mark.timeout(30)


def options(call_id: str = "t1", body: bytes = b"", port: int = 5070) -> bytes:
    head = (
        f"OPTIONS sip:2001@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:{port};branch=z9hG4bK{call_id}\r\n"
        f"From: <sip:c@127.0.0.1>;tag=f\r\nTo: <sip:2001@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Recorder:
    def __init__(self, admit: bool = True) -> None:
        self.inbound: asyncio.Queue[Inbound] = asyncio.Queue()
        self.malformed: list[tuple[bytes, tuple[str, int], str, SipParseError]] = []
        self.admit_answer = admit
        self.asked = 0

    def on_message(self, inbound: Inbound) -> None:
        self.inbound.put_nowait(inbound)

    def on_malformed(self, data: bytes, source: tuple[str, int], transport: str,
                     exc: SipParseError) -> None:
        self.malformed.append((data, source, transport, exc))

    def admit(self, source: tuple[str, int]) -> bool:
        self.asked += 1
        return self.admit_answer

    async def next(self, timeout: float = 2.0) -> Inbound:
        return await asyncio.wait_for(self.inbound.get(), timeout)


@pytest.fixture
async def started() -> AsyncIterator[tuple[SipTransport, Recorder]]:
    recorder = Recorder()
    transport = SipTransport("127.0.0.1", 0, recorder.on_message,
                             on_malformed=recorder.on_malformed, admit=recorder.admit)
    await transport.start()
    try:
        yield transport, recorder
    finally:
        await asyncio.wait_for(transport.close(), 5.0)
        await asyncio.sleep(0.01)
        current = asyncio.current_task()
        left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        assert not left, f"tasks left after close(): {left}"


async def test_udp_and_tcp_share_the_port(started: tuple[SipTransport, Recorder]) -> None:
    transport, _ = started
    host, port = transport.local_address
    assert port > 0
    reader, writer = await asyncio.open_connection(host, port)
    writer.close()
    await writer.wait_closed()


async def test_udp_message_in_and_reply_out(started: tuple[SipTransport, Recorder]) -> None:
    transport, recorder = started
    peer = await UdpSocket.open()
    try:
        peer.sendto(options(), transport.local_address)
        got = await recorder.next()
        assert isinstance(got.message, SipRequest) and got.message.method == "OPTIONS"
        assert got.source == peer.address and got.transport == "udp" and not got.reliable
        transport.send(b"SIP/2.0 200 OK\r\n\r\n", peer.address)
        received = await peer.recv(2.0)
        assert received is not None and received[0].startswith(b"SIP/2.0 200")
        assert transport.stats.received == 1 and transport.stats.sent == 1
    finally:
        peer.close()


async def test_udp_keepalive_garbage_and_oversize(started: tuple[SipTransport, Recorder]
                                                  ) -> None:
    transport, recorder = started
    small = SipTransport("127.0.0.1", 0, recorder.on_message, tcp=False,
                         on_malformed=recorder.on_malformed, max_message_size=200)
    await small.start()
    peer = await UdpSocket.open()
    try:
        for target in (transport, small):
            peer.sendto(b"\r\n\r\n", target.local_address)  # keepalive: ignored, not malformed
        peer.sendto(b"\x00\x01 not sip", transport.local_address)
        peer.sendto(options(body=b"x" * 300), small.local_address)
        peer.sendto(options("after"), transport.local_address)
        got = await recorder.next()
        assert got.message.headers.get("Call-ID") == "after"
        assert transport.stats.malformed == 1 and small.stats.malformed == 1
        assert "too large" in small_reason(recorder)
        assert recorder.inbound.empty()
    finally:
        peer.close()
        await small.close()


def small_reason(recorder: Recorder) -> str:
    return " ".join(str(exc) for *_, exc in recorder.malformed)


async def test_malformed_request_reaches_on_malformed_with_partial_request(
    started: tuple[SipTransport, Recorder],
) -> None:
    transport, recorder = started
    peer = await UdpSocket.open()
    try:
        peer.sendto(options().replace(b"CSeq: 1 OPTIONS", b"CSeq: x OPTIONS"),
                    transport.local_address)
        for _ in range(100):
            if recorder.malformed:
                break
            await asyncio.sleep(0.01)
        (data, source, proto, exc) = recorder.malformed[0]
        assert source == peer.address and proto == "udp"
        assert exc.status == 400 and exc.request is not None
        assert exc.request.method == "OPTIONS"
    finally:
        peer.close()


async def test_handler_exception_does_not_stop_the_listener() -> None:
    calls: list[Inbound] = []

    def explode(inbound: Inbound) -> None:
        calls.append(inbound)
        raise RuntimeError("boom")

    transport = SipTransport("127.0.0.1", 0, explode, tcp=False)
    await transport.start()
    peer = await UdpSocket.open()
    try:
        for i in range(3):
            peer.sendto(options(f"c{i}"), transport.local_address)
        for _ in range(100):
            if len(calls) == 3:
                break
            await asyncio.sleep(0.01)
        assert len(calls) == 3
    finally:
        peer.close()
        await transport.close()


async def test_admit_refuses_before_parsing(started: tuple[SipTransport, Recorder]) -> None:
    transport, recorder = started
    recorder.admit_answer = False
    peer = await UdpSocket.open()
    try:
        for _ in range(20):
            peer.sendto(b"garbage that would be malformed", transport.local_address)
        peer.sendto(options(), transport.local_address)
        for _ in range(100):
            if transport.stats.refused == 21:
                break
            await asyncio.sleep(0.01)
        assert transport.stats.refused == 21
        assert transport.stats.malformed == 0 and recorder.inbound.empty()
    finally:
        peer.close()


async def test_tcp_framing_split_and_batched(started: tuple[SipTransport, Recorder]) -> None:
    transport, recorder = started
    reader, writer = await asyncio.open_connection(*transport.local_address)
    try:
        first = options("a", body=b"hello")
        writer.write(first[:30])
        await writer.drain()
        await asyncio.sleep(0.02)
        assert recorder.inbound.empty()
        writer.write(first[30:] + options("b") + b"\r\n" + options("c")[:10])
        await writer.drain()
        got = [await recorder.next(), await recorder.next()]
        assert [g.message.headers.get("Call-ID") for g in got] == ["a", "b"]
        assert got[0].message.body == b"hello" and got[0].transport == "tcp"
        writer.write(options("c")[10:])
        await writer.drain()
        assert (await recorder.next()).message.headers.get("Call-ID") == "c"
        # The reply goes back on the same connection.
        transport.send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", got[0].source, "tcp")
        line = await asyncio.wait_for(reader.readline(), 2.0)
        assert line == b"SIP/2.0 200 OK\r\n"
    finally:
        writer.close()


async def test_tcp_malformed_but_framed_message_keeps_the_connection(
    started: tuple[SipTransport, Recorder],
) -> None:
    transport, recorder = started
    reader, writer = await asyncio.open_connection(*transport.local_address)
    try:
        bad = options("bad").replace(b"CSeq: 1 OPTIONS", b"CSeq: x OPTIONS")
        writer.write(bad + options("good"))
        await writer.drain()
        got = await recorder.next()
        assert got.message.headers.get("Call-ID") == "good"
        assert len(recorder.malformed) == 1 and recorder.malformed[0][3].status == 400
        writer.write(options("later"))
        await writer.drain()
        assert (await recorder.next()).message.headers.get("Call-ID") == "later"
    finally:
        writer.close()


async def test_tcp_ping_gets_pong(started: tuple[SipTransport, Recorder]) -> None:
    """RFC 5626 §4.4.1: a double-CRLF ping on a stream is answered with a CRLF pong."""
    transport, _ = started
    reader, writer = await asyncio.open_connection(*transport.local_address)
    try:
        writer.write(b"\r\n\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(2), 2.0) == b"\r\n"
    finally:
        writer.close()


async def test_tcp_garbage_closes_the_connection(started: tuple[SipTransport, Recorder]) -> None:
    transport, recorder = started
    reader, writer = await asyncio.open_connection(*transport.local_address)
    try:
        writer.write(b"\x16\x03\x01\x02\x00 TLS hello, not SIP\r\n\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(100), 2.0) == b""  # closed by the transport
        assert transport.stats.malformed == 1
    finally:
        writer.close()


async def test_tcp_refused_source_is_disconnected(started: tuple[SipTransport, Recorder]
                                                  ) -> None:
    transport, recorder = started
    recorder.admit_answer = False
    reader, writer = await asyncio.open_connection(*transport.local_address)
    try:
        writer.write(options())
        await writer.drain()
        assert await asyncio.wait_for(reader.read(100), 2.0) == b""
        assert recorder.inbound.empty() and transport.stats.refused >= 1
    finally:
        writer.close()


async def test_tcp_send_opens_and_reuses_one_connection(
    started: tuple[SipTransport, Recorder],
) -> None:
    transport, _ = started
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.put_nowait((r, w))

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    destination = server.sockets[0].getsockname()[:2]
    try:
        transport.send(b"ONE\r\n", destination, "tcp")
        transport.send(b"TWO\r\n", destination, "tcp")  # while the first still connects
        reader, writer = await asyncio.wait_for(accepted.get(), 2.0)
        assert await asyncio.wait_for(reader.readline(), 2.0) in (b"ONE\r\n", b"TWO\r\n")
        assert await asyncio.wait_for(reader.readline(), 2.0) in (b"ONE\r\n", b"TWO\r\n")
        transport.send(b"THREE\r\n", destination, "tcp")
        assert await asyncio.wait_for(reader.readline(), 2.0) == b"THREE\r\n"
        await asyncio.sleep(0.05)
        assert accepted.empty()  # one connection for all three
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_tcp_send_to_closed_port_is_counted() -> None:
    transport = SipTransport("127.0.0.1", 0, lambda _: None)
    await transport.start()
    probe = await UdpSocket.open()
    dead = probe.address  # a UDP port: nobody listens on its TCP twin, most likely
    probe.close()
    try:
        transport.send(b"X", dead, "tcp")
        for _ in range(200):
            if transport.stats.send_errors:
                break
            await asyncio.sleep(0.01)
        assert transport.stats.send_errors == 1
    finally:
        await transport.close()


async def test_close_with_open_connections_and_pending_connect() -> None:
    transport = SipTransport("127.0.0.1", 0, lambda _: None)
    await transport.start()
    reader, writer = await asyncio.open_connection(*transport.local_address)
    transport.send(b"X", ("127.0.0.1", 9), "tcp")  # a connect that is still in flight
    await asyncio.sleep(0)
    await asyncio.wait_for(transport.close(), 3.0)
    assert await asyncio.wait_for(reader.read(10), 2.0) == b""
    writer.close()
    await asyncio.sleep(0.01)
    current = asyncio.current_task()
    assert not [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    with pytest.raises(RuntimeError):
        transport.send(b"X", ("127.0.0.1", 9))


async def test_inbound_tcp_connections_are_bounded() -> None:
    recorder = Recorder()
    transport = SipTransport("127.0.0.1", 0, recorder.on_message, max_inbound_tcp=2)
    await transport.start()
    writers = []
    try:
        kept = [await asyncio.open_connection(*transport.local_address) for _ in range(2)]
        writers += [w for _, w in kept]
        reader, extra = await asyncio.open_connection(*transport.local_address)
        writers.append(extra)
        assert await asyncio.wait_for(reader.read(100), 2.0) == b""  # the third is refused
        assert transport.stats.tcp_refused == 1
        _, kept_writer = kept[0]
        kept_writer.write(options("kept"))  # the first two still work
        await kept_writer.drain()
        assert (await recorder.next()).message.call_id == "kept"
        kept_writer.close()  # one closes: room for a new one
        await asyncio.sleep(0.05)
        _, again = await asyncio.open_connection(*transport.local_address)
        writers.append(again)
        again.write(options("again"))
        await again.drain()
        assert (await recorder.next()).message.call_id == "again"
        assert transport.stats.tcp_refused == 1
    finally:
        for writer in writers:
            writer.close()
        await transport.close()


async def test_idle_inbound_tcp_is_closed_but_our_own_connection_stays() -> None:
    transport = SipTransport("127.0.0.1", 0, lambda _: None, tcp_idle_timeout_s=0.2)
    await transport.start()
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.put_nowait((r, w))

    registrar = await asyncio.start_server(on_client, "127.0.0.1", 0)
    destination = registrar.sockets[0].getsockname()[:2]
    try:
        transport.send(b"REGISTER-ish\r\n", destination, "tcp")  # a connection we open
        ours_reader, ours_writer = await asyncio.wait_for(accepted.get(), 2.0)
        assert await asyncio.wait_for(ours_reader.readline(), 2.0) == b"REGISTER-ish\r\n"
        reader, writer = await asyncio.open_connection(*transport.local_address)  # theirs
        assert await asyncio.wait_for(reader.read(100), 3.0) == b""  # closed when idle
        assert transport.stats.tcp_idle_closed == 1
        await asyncio.sleep(0.3)
        transport.send(b"STILL\r\n", destination, "tcp")  # ours was kept: same connection
        assert await asyncio.wait_for(ours_reader.readline(), 2.0) == b"STILL\r\n"
        assert accepted.empty()
        writer.close()
        ours_writer.close()
    finally:
        registrar.close()
        await registrar.wait_closed()
        await transport.close()


async def test_port_zero_retries_when_the_udp_number_is_taken_for_tcp(
        monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    real = loop.create_server
    calls = []

    async def busy_once(*args, **kwargs):  # the first number UDP got is taken for TCP
        calls.append(kwargs.get("port"))
        if len(calls) == 1:
            raise OSError(98, "address already in use")
        return await real(*args, **kwargs)

    monkeypatch.setattr(loop, "create_server", busy_once)
    transport = SipTransport("127.0.0.1", 0, lambda _: None)
    await transport.start()
    try:
        assert len(calls) == 2 and transport.port == calls[1]
        reader, writer = await asyncio.open_connection(*transport.local_address)
        writer.close()
    finally:
        await transport.close()


async def test_a_fixed_port_taken_for_tcp_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()

    async def busy(*args, **kwargs):
        raise OSError(98, "address already in use")

    monkeypatch.setattr(loop, "create_server", busy)
    from tests.harness.ports import PortAllocator

    transport = SipTransport("127.0.0.1", PortAllocator().port(), lambda _: None)
    with pytest.raises(OSError):
        await transport.start()
    assert transport._udp is None  # the UDP socket it opened was closed again
