"""One request's exchange inside ``Upstream``: a producer on the upstream's own clock, a
sender, and a listener that ends both the moment the client disconnects; the record of how it
ended (outcome, disconnect time, tokens sent).

Floor: ``testing``. ``_wire_server`` (the ASGI app: routing, parsing, faults) makes one per
request; this module knows the app only as a type.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamguard.testing._wire_common import Turn, Wire, dumps, token_text
from streamguard.testing._wire_records import Fault, RequestRecord

if TYPE_CHECKING:
    from streamguard.testing._wire_server import App

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _End:
    """Queue markers from the producer to the sender."""


_COMPLETE, _RESET = _End(), _End()


@dataclass
class _Usage:
    output_tokens: int


class Exchange:
    """One request in flight: a producer on the upstream's clock, a sender that writes what was
    produced, and a listener that ends both the moment the client disconnects."""

    def __init__(
        self,
        app: App,
        scope: Scope,
        send: Send,
        record: RequestRecord,
        turn: Turn,
        wire: Wire,
        fault: Fault | None,
    ) -> None:
        self.app, self.scope, self._send, self.record = app, scope, send, record
        self.turn, self.wire, self.fault = turn, wire, fault
        # Unbounded on purpose: generation never waits for the client, as on a real server.
        self.queue: asyncio.Queue[bytes | _End | _Usage] = asyncio.Queue()
        self.outcome: str | None = None
        self.ended = asyncio.Event()
        self.transport = app.transport_for(scope)
        self.client_gone = False  # a background turn's client left: generation goes on

    def gone(self) -> bool:
        """Whether generation must stop: the client has gone (even if the server has not told
        the app yet), or, for a background response, the turn was cancelled.

        The transport knows one step before ``http.disconnect`` is delivered: a timer that fires
        in the same loop iteration as the client's FIN must not produce (or send) another
        token.
        """
        if (
            self.outcome is None
            and not self.client_gone
            and self.transport is not None
            and self.transport.is_closing()
        ):
            self.client_left()
        return self.outcome is not None

    def client_left(self) -> None:
        """The client went away: the request ends, unless it is a background response, which
        the server generates to the end (or until it is cancelled) with no one to send to."""
        now = time.monotonic_ns()
        if not self.turn.background:
            self.end("disconnected", disconnected_ns=now)
        elif not self.client_gone:
            self.client_gone = True
            self.record._client_left(now)

    def end(self, outcome: str, *, disconnected_ns: int | None = None) -> None:
        """The first end wins; the producer checks ``outcome`` before every token."""
        if self.outcome is None:
            self.outcome = outcome
            self.record._finish(outcome, disconnected_ns=disconnected_ns)
            self.ended.set()

    async def run(self, receive: Receive) -> None:
        tasks = [asyncio.create_task(self._produce()), asyncio.create_task(self._write())]
        listener = asyncio.create_task(self._listen(receive))
        try:
            await self.ended.wait()
        finally:
            for task in tasks:
                task.cancel()
            if self.outcome in ("reset", "shutdown"):
                # Let the server see the aborted connection before the app returns, so it does
                # not complain about a response that was never completed.
                await asyncio.wait([listener], timeout=1.0)
            listener.cancel()
            await asyncio.gather(*tasks, listener, return_exceptions=True)

    async def _listen(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.client_left()
                return

    async def _produce(self) -> None:
        turn, wire, fault, stream = self.turn, self.wire, self.fault, self.record.stream
        put = self.queue.put_nowait
        if stream:
            for frame in wire.head(turn):
                put(frame)
        if fault is not None and fault.kind == "slow_first_token":
            await asyncio.sleep(fault.delay)
        fault_at = None
        if fault is not None and fault.kind in ("reset", "stall", "malformed"):
            fault_at = min(fault.after_tokens, turn.n_tokens)
        interval_ns = round(self.record.token_interval * 1e9)
        t0 = t_next = time.monotonic_ns()
        for i in range(turn.n_tokens + 1):
            if fault is not None and i == fault_at:
                if fault.kind == "malformed" and stream:
                    put(wire.malformed())
                elif fault.kind == "malformed":
                    put(b'{"malformed": ')
                    put(_COMPLETE)
                    return
                else:
                    if fault.kind == "stall":
                        await asyncio.sleep(fault.delay)
                    put(_RESET)
                    return
            if i == turn.n_tokens:
                break
            # A fixed schedule keeps the rate exact; a server that fell behind (a busy machine)
            # goes on at its rate instead of bursting to catch up, as a model server would.
            t_next = max(t_next + interval_ns, time.monotonic_ns())
            await asyncio.sleep(max(0, t_next - time.monotonic_ns()) / 1e9)
            if self.gone():
                return
            self.record._add_token(time.monotonic_ns())
            text = token_text(i)
            turn.pieces.append(text)
            if stream:
                put(wire.token(turn, i, text))
        turn.elapsed_ns = time.monotonic_ns() - t0
        if stream:
            for frame in wire.tail(turn):
                put(frame)
            if wire.tail_reports_usage(turn):
                put(_Usage(turn.generated))
        else:
            put(dumps(wire.whole(turn)).encode())
            put(_Usage(turn.generated))
        put(_COMPLETE)

    async def _write(self) -> None:
        stream = self.record.stream
        held: list[bytes] = []  # a non-streaming body is sent whole, when the turn is done
        if stream:
            await self._out(start=self.wire.media_type)
        while self.outcome is None:
            item = await self.queue.get()
            if isinstance(item, _Usage):
                self.record.output_tokens = item.output_tokens
            elif item is _RESET:
                self.end("reset")
                self.abort()
            elif item is _COMPLETE:
                if not stream:
                    await self._out(start="application/json")
                await self._out(body=b"".join(held), more=False)
                self.end("completed")
            elif isinstance(item, bytes) and stream:
                await self._out(body=item, more=True)
            elif isinstance(item, bytes):
                held.append(item)

    async def _out(self, *, start: str | None = None, body: bytes = b"", more: bool = True) -> None:
        if start is not None:
            headers = [(b"content-type", start.encode()), (b"cache-control", b"no-cache")]
            message: dict[str, Any] = {"type": "http.response.start", "status": 200}
            message["headers"] = [*headers, (b"x-request-id", f"up-{self.record.id}".encode())]
            self.record.status = 200
        else:
            message = {"type": "http.response.body", "body": body, "more_body": more}
        if self.gone() or self.client_gone:
            return
        try:
            await self._send(message)
        except OSError:
            # Servers other than uvicorn report a gone client by failing the send.
            self.client_left()

    def abort(self) -> None:
        """Reset the TCP connection: SO_LINGER 0, then abort, so the peer gets an RST."""
        transport = self.transport
        if transport is None:
            return  # returning without completing makes the server close the connection
        if transport.is_closing():
            return  # the client is gone already
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
