"""One connected device: reads frames, acts on them, and writes what the device should get.

Tasks per connection: the handler task reads (and runs the request logic). What is queued
for a device during one scheduler tick (a commit's deliveries and receipts, the Sent answers
of the sends it stored) is written once, at the end of the tick, by the node's `Flusher`: one
non-blocking write per connection, no task of its own. Only when the socket does not take it
all (or for TLS and WebSocket, or to drain the inbox from the store when the device is behind)
does a writer task own the socket's sending side; it ends when everything is written, so an
idle connection holds one task and no queue. There is never more than one writer. Live items
arrive through `offer()` from the router, in commit order.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Final

import trio

from chatd.analytics import events as analytics
from chatd.core import Delivery, Item, now_ms, wire
from chatd.core.delivery import RefusedForNow, shown_to
from chatd.protocol import (
    MAX_BODY_SIZE,
    NEED_DATA,
    PEER_CLOSED,
    Connection,
    ErrorCode,
    Frame,
    LocalProtocolError,
    ProtocolError,
)
from chatd.protocol import frames as F
from chatd.store import StoreError

from . import handlers, metrics
from .transport import RECEIVE_SIZE

if TYPE_CHECKING:
    from .app import ChatServer
    from .transport import StreamTransport, WebSocketTransport

log = logging.getLogger("chatd")
DRAIN_PAGE: Final = 500
BUSY: Final = float("inf")  # rx_at while the connection's requests are being handled
MAX_PAUSE_MS: Final = 1000  # how long a rate-limited connection is not read
FRAME_OVERHEAD: Final = 64  # bytes a queued frame costs beyond its own (deque slot, header)
WRITE_COALESCE: Final = 256 * 1024  # bytes gathered into one write
_ORDER_FREE: Final = (F.Send, F.Ping, F.Pong)  # frames an Ack may be reordered with
_NOT_ACTIVITY: Final = (F.Ping, F.Pong, F.Ack, F.Sync, F.Goodbye)  # the app's own doing


class Closing(Exception):
    """Raised inside the reader to end the session after an error frame was queued."""


class Flusher:
    """Writes what sessions queued, once per session per scheduler tick (see the module's
    doc). A session is handed over when its queue stops being empty; the task waits one more
    tick before writing, so that the tasks woken with it (a commit wakes the senders whose
    messages it stored, and they queue their Sent) add to the same write."""

    def __init__(self) -> None:
        self._due: list[Session] = []
        self._wake = trio.Event()

    def add(self, session: Session) -> None:
        if not self._due:
            self._wake.set()
        self._due.append(session)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await trio.lowlevel.cancel_shielded_checkpoint()  # (the tasks woken with us)
            due, self._due = self._due, []
            for session in due:
                try:
                    session.flush()
                except Exception:  # a bug: it ends that connection, never the others
                    log.exception("writing to a connection failed")
                    session.abort()


class Session:
    __slots__ = ("server", "transport", "conn", "user", "device", "_out", "_out_bytes",
                 "_writing", "_sent_upto", "_live", "_need_sync", "_nursery", "_closing",
                 "rx_at", "frame_at", "_acks_running", "_acks_done", "background", "watching",
                 "_presence_pending", "_item_max", "_acked", "_pause", "_msg_upto",
                 "connected_ms", "busy_at", "refused")

    def __init__(self, server: ChatServer, transport: StreamTransport | WebSocketTransport,
                 conn: Connection, user: str, device: str, cursor: int,
                 background: bool = False) -> None:
        self.server = server
        self.transport = transport
        self.conn = conn
        self.user = user
        self.device = device
        self._out: deque[bytes] | None = None  # frames to write; None while idle
        self._out_bytes = 0  # what _out holds, counted with FRAME_OVERHEAD per frame
        self._writing = False  # a writer task is running
        self._sent_upto = cursor  # highest inbox position handed to the writer (or skipped)
        self._acked = cursor  # highest position acknowledged: an Ack not above it costs nothing
        # highest position of a message from another user queued to the device: an Ack above
        # it covers only receipts and the user's own messages, which nobody waits for (lazy)
        self._msg_upto = 0
        self._pause = 0  # ms the reader waits before reading again (a rate limit was hit)
        self._live = False  # the backlog is drained; offers in sequence go straight out
        self._need_sync = True
        self._nursery: trio.Nursery | None = None
        self._closing = False
        self.rx_at = trio.current_time()  # last time bytes arrived (read by the sweeper)
        self.frame_at: float | None = None  # when the frame being received started
        self._acks_running = 0  # Acks being stored beside the reader
        self._acks_done: trio.Event | None = None  # set when they are all stored
        self.background = background  # a connection the app made by itself: not activity
        self.watching: set[str] | None = None  # users whose presence this device follows
        self._presence_pending: dict[str, F.Presence] | None = None  # held while backed up
        self._item_max = MAX_BODY_SIZE  # largest inbox item seen: sizes the drain's pages
        self.connected_ms = now_ms()  # (a peer's news of a newer connection ends this one)
        self.busy_at: float | None = None  # BUSY since (as the sweeper saw), or last pinged
        self.refused: RefusedForNow | None = None  # sends refused for now (handlers.sends)

    # ---- output --------------------------------------------------------------------------

    def _queue(self, data: bytes) -> None:
        """Queue bytes to write. Every frame counts against the connection's outbound budget
        (answers too): a device that does not read what it asked for or is sent is told
        SLOW_CONSUMER, ahead of what is queued, and disconnected. Nothing is lost: what it
        did not acknowledge stays in its inbox for the next connection."""
        size = len(data) + FRAME_OVERHEAD
        out = self._out
        if out is None:
            out = self._out = deque()
        elif (self._out_bytes + size > self.server.config.max_outbound
              or len(out) >= self.server.config.max_queue):
            self._slow_consumer()
            return
        if not out and not self._writing:
            self.server.flusher.add(self)  # (written at the end of this tick)
        out.append(data)
        self._out_bytes += size

    def _slow_consumer(self) -> None:
        self.server.stats["slow_consumers"] += 1
        metrics.SLOW_CONSUMERS.inc()
        self._out = deque()
        self._out_bytes = 0
        self._presence_pending = None
        self.close_with(ErrorCode.SLOW_CONSUMER,
                        "outbound queue full; reconnect to resume from the store")

    @property
    def backed_up(self) -> bool:
        """Over a quarter of the outbound budget is waiting: large answers wait too."""
        return self._out_bytes > self.server.config.max_outbound // 4

    def _kick(self) -> None:
        """Make sure a writer runs (there is at most one)."""
        if not self._writing and self._nursery is not None:
            self._writing = True
            self._nursery.start_soon(self._writer)

    def send_frame(self, frame: Frame) -> None:
        """Queue a frame for the device. A no-op once the connection is closing or closed
        (either side said goodbye): never an exception, whoever calls it."""
        if self._closing:
            return
        try:
            data = self.conn.send(frame)
        except LocalProtocolError:  # the device said goodbye: it takes nothing more
            return
        self._queue(data)

    def send_presence(self, frame: F.Presence) -> None:
        """Presence gives way to messages: while this device's queue is backed up, keep only
        the latest state per user and send it once the queue has drained."""
        if self._closing:
            return
        if self.backed_up or self.queued > self.server.config.max_queue // 4:
            if self._presence_pending is None:
                self._presence_pending = {}
            self._presence_pending[frame.user] = frame
            self.server.stats["presence_coalesced"] += 1
        else:
            self.send_frame(frame)

    def close_with(self, code: ErrorCode, message: str, grace: float = 1.0) -> None:
        """End the connection with an error frame (see end)."""
        self.end(F.Error(code=code, message=message), grace)

    def end(self, last: F.Error | F.Goodbye, grace: float = 1.0) -> None:
        """Queue a last frame, stop taking work, and end the connection once it is written
        (or after `grace` seconds if the device does not read it)."""
        if self._closing:
            return
        try:
            data = self.conn.send(last)
        except LocalProtocolError:
            data = b""
        if data:  # the last frame goes out whatever the budget says
            if self._out is None:
                self._out = deque()
            self._out.append(data)
            self._out_bytes += len(data) + FRAME_OVERHEAD
            self._kick()
        self._closing = True
        if self._nursery is not None:
            scope = self._nursery.cancel_scope
            scope.deadline = min(scope.deadline, trio.current_time() + grace)

    def offer(self, item: Item, body: bytes) -> None:
        """An inbox item for this user was committed. Never blocks."""
        q = item.q
        if q <= self._sent_upto or self._closing:
            return
        if self._live and not self._need_sync and q == self._sent_upto + 1:
            self._sent_upto = q
            message = item.message if type(item) is Delivery else None
            if message is not None and not shown_to(self.user, self.device, message.sender,
                                                    message.device):
                return  # this device sent it
            self._queue(self.conn.frame_bytes(body))
            metrics.ITEMS_OUT.inc()
            if message is not None:
                if message.sender != self.user:
                    self._msg_upto = q
                metrics.observe_delivery(message.ts)
                analytics.delivered(self.user, message.ts)
        else:
            self._need_sync = True
            self._kick()

    @property
    def queued(self) -> int:
        """Frames waiting to be written."""
        return len(self._out) if self._out is not None else 0

    def poke(self) -> None:
        """The user's inbox grew somewhere else: read the store from this device's position."""
        if not self._closing:
            self._need_sync = True
            self._kick()

    def flush(self) -> None:
        """Write what is queued without waiting (the Flusher calls it); what the socket does
        not take now goes to a writer task."""
        if self._writing or self._closing or self._nursery is None:
            return  # (a writer writes it; the session has not started, or is ending: `end`
            # queued its last frame and started a writer)
        try:
            while self._out:
                data = self._take()
                sent = self.transport.send_nowait(data)
                if sent < len(data):  # the rest when the socket can take it
                    self._out.appendleft(data[sent:])
                    self._out_bytes += len(data) - sent + FRAME_OVERHEAD
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.abort()  # the device went away (as in _writer)
            return
        if self._out:
            self._kick()
        else:
            self._out = None  # idle: hold no queue
            self._out_bytes = 0

    def abort(self) -> None:
        """End the connection now, writing nothing more."""
        self._closing = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _take(self) -> bytes:
        """The next bytes to write: every queued frame up to WRITE_COALESCE bytes where the
        transport takes several frames in one write, else one frame."""
        out = self._out
        assert out
        if self.transport.coalesce and len(out) > 1:
            parts, size = [], 0
            while out and size < WRITE_COALESCE:
                parts.append(out.popleft())
                size += len(parts[-1])
            self._out_bytes -= size + FRAME_OVERHEAD * len(parts)
            return b"".join(parts)
        data = out.popleft()
        self._out_bytes -= len(data) + FRAME_OVERHEAD
        return data

    async def _writer(self) -> None:
        try:
            await self._write_loop()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # the device went away: end the session; what it did not ack stays in the store
            self._closing = True
        finally:
            self._writing = False
        if self._closing and self._nursery is not None:
            self._nursery.cancel_scope.cancel()  # all is written, the last frame included

    async def _write_loop(self) -> None:
        transport = self.transport
        while True:
            if self._out:
                await transport.send(self._take())
            elif self._need_sync and not self._closing:
                await self._sync_step()
            elif self._presence_pending:
                pending, self._presence_pending = self._presence_pending, None
                for frame in pending.values():
                    self.send_frame(frame)
            else:
                self._out = None  # idle: hold no queue
                self._out_bytes = 0
                return

    async def _sync_step(self) -> None:
        """Queue the next page of the inbox (the writer calls it when the queue is empty).
        A page is sized to fill at most half the outbound budget with items as large as the
        largest seen lately on this connection (the first page assumes the largest body),
        and what does not fit is read again for the next step: draining a backlog of big
        messages holds a bounded amount, and never looks like a slow consumer."""
        self._need_sync = False
        cfg = self.server.config
        room, frames = cfg.max_outbound // 2, max(1, cfg.max_queue // 2)
        limit = max(1, min(DRAIN_PAGE, frames, room // (self._item_max + FRAME_OVERHEAD)))
        page = await self.server.store.inbox(self.user, self.device, self._sent_upto, limit)
        if self._closing:
            return
        biggest = 0
        upto = page.upto
        for item in page.items:
            if item.q > self._sent_upto:
                data = self.conn.frame_bytes(wire.body(item))
                biggest = max(biggest, len(data))
                if self._out_bytes + len(data) > room and self.queued:
                    upto = item.q - 1  # the rest in the next step
                    self._need_sync = True
                    break
                self._queue(data)
                metrics.ITEMS_OUT.inc()
                if type(item) is Delivery:
                    if item.message.sender != self.user:
                        self._msg_upto = item.q
                    metrics.observe_delivery(item.message.ts)
                    analytics.delivered(self.user, item.message.ts)
        if page.items:  # grow at once, shrink slowly
            self._item_max = max(biggest, self._item_max // 2, 256)
        self._sent_upto = max(self._sent_upto, upto)
        if page.more:
            self._need_sync = True
        elif not self._live and not self._need_sync:
            self._live = True
            self.send_frame(F.Synced(upto=self._sent_upto))

    # ---- input ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it ends. Cancelled from outside on shutdown."""
        conn, transport = self.conn, self.transport
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._kick()  # write what was queued before (Welcome) and drain the backlog
            try:
                while not self._closing:
                    # No timer here (ChatServer.sweep checks every connection's timeouts), and
                    # no local holds the bytes or frames of the last read while we wait.
                    conn.receive_data(await transport.receive(RECEIVE_SIZE))
                    self.rx_at = BUSY  # not idle while its requests are handled (slow store)
                    if await self.handle_all(self._received_frames()):
                        break
                    self.rx_at = trio.current_time()
                    self.busy_at = None
                    if not conn.buffered:
                        self.frame_at = None
                    elif self.frame_at is None:
                        self.frame_at = self.rx_at
                    if self._pause:  # over a rate limit: read nothing more until it refills
                        pause, self._pause = min(self._pause, MAX_PAUSE_MS), 0
                        await trio.sleep(pause / 1000)
                        self.rx_at = trio.current_time()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the device went away
            except Closing:
                pass
            except ProtocolError as exc:
                self.close_with(exc.code, exc.message)
            except StoreError as exc:
                self.close_with(ErrorCode.INTERNAL, f"store unavailable: {exc}")
            finally:  # (also when cancelled: nothing is written from now on but by `end`)
                if not self._closing:  # the device left (or said goodbye): nothing more to say
                    self._closing = True
                    nursery.cancel_scope.cancel()
            nursery.cancel_scope.deadline = min(nursery.cancel_scope.deadline,
                                                trio.current_time() + 1.0)

    def check_timeouts(self, now: float) -> None:
        """Close the connection if it went silent or a frame stalls (called by the sweeper).
        While its requests are being handled (a send waiting for a slow store or a chat's
        owner that does not answer yet) the reader reads nothing, not even the device's
        Pings, so the node pings the device itself every half heartbeat: its client keeps
        the connection instead of giving up on the node (which would not make the send go
        faster) and sending everything again through another."""
        cfg = self.server.config
        if self._closing:
            return
        if self.rx_at == BUSY:
            if self.busy_at is None:
                self.busy_at = now
            elif now - self.busy_at >= cfg.heartbeat / 2:
                self.busy_at = now
                self.send_frame(F.Ping())
                self.server.stats["busy_pings"] += 1
            return
        if self.frame_at is not None and now - self.frame_at > cfg.frame_timeout:
            self.close_with(ErrorCode.TIMEOUT, "frame not completed in time")
        elif now - self.rx_at > cfg.idle_timeout:
            self.close_with(ErrorCode.TIMEOUT, "no data within the idle timeout")

    def error(self, code: ErrorCode, message: str, ref: str | None = None,
              rid: int | None = None, retry_ms: int | None = None) -> None:
        self.send_frame(F.Error(code=code, message=message, ref=ref, rid=rid, retry_ms=retry_ms))

    def pause(self) -> None:
        self._pause = MAX_PAUSE_MS

    def resync(self, cursor: int) -> None:
        self._sent_upto = cursor
        self._live = False
        self._need_sync = True
        self._kick()

    def _received_frames(self) -> tuple[list[Frame], bool]:
        """The frames the connection has now, and whether the peer closed after them."""
        frames: list[Frame] = []
        while (ev := self.conn.next_event()) is not NEED_DATA:
            if ev is PEER_CLOSED:
                return frames, True
            frames.append(ev)
        return frames, False

    async def handle_all(self, received: tuple[list[Frame], bool]) -> bool:
        """Act on the frames one read brought. Acks are cumulative and the store keeps the
        highest, so all of a read's Acks become one store call; when the rest is only Sends
        and Pings (a busy sender), it runs beside the reader instead of before it. Otherwise
        it goes first (a Read after an Ack must not overtake it). The other frames are handled
        in order, a run of consecutive Sends as one store write (so a pipelining client is
        not held to one message per commit). Returns whether the peer closed."""
        frames, peer_closed = received
        if any(type(ev) not in _NOT_ACTIVITY for ev in frames):
            self.server.presence.activity(self)
        upto = 0
        rest: list[Frame] = []
        for ev in frames:
            if isinstance(ev, F.Ack):
                upto = max(upto, ev.upto)
            else:
                rest.append(ev)
        if upto > self._acked:
            # Over receipts only (nobody waits for what that makes): the store may hold it
            # to share a later commit. Over a message: its sender waits for DELIVERED.
            lazy = self._msg_upto <= self._acked
            self._acked = upto
            if self._nursery is not None and all(type(ev) in _ORDER_FREE for ev in rest):
                self._acks_running += 1
                self._nursery.start_soon(self._background_ack, upto, lazy)
            else:
                await self._ack(upto, lazy)
        i, n = 0, len(rest)
        while i < n and not self._closing:
            ev = rest[i]
            j = i + 1
            if isinstance(ev, F.Send):
                while j < n and isinstance(rest[j], F.Send):
                    j += 1
                await handlers.sends(self.server, self, rest[i:j])  # type: ignore[arg-type]
            else:
                if self._acks_running and type(ev) not in _ORDER_FREE:
                    # e.g. a Read must not overtake the Ack before it (DELIVERED, then READ)
                    if self._acks_done is None:
                        self._acks_done = trio.Event()
                    await self._acks_done.wait()
                await self.handle(ev)
            i = j
        return peer_closed

    async def _background_ack(self, upto: int, lazy: bool) -> None:
        try:
            await self._ack(upto, lazy)
        finally:
            self._acks_running -= 1
            if not self._acks_running and self._acks_done is not None:
                self._acks_done.set()
                self._acks_done = None

    async def _ack(self, upto: int, lazy: bool) -> None:
        """Store an Ack, again if the store fails it (handlers.again_on_failure)."""
        store = self.server.store
        try:
            await handlers.again_on_failure(
                lambda: store.ack(self.user, self.device, upto, now_ms(), lazy=lazy),
                f"ack of {self.user}/{self.device} up to {upto}")
        except StoreError as exc:
            self.close_with(ErrorCode.INTERNAL, f"store unavailable: {exc}")

    async def handle(self, ev: Frame) -> None:
        """One frame other than Send and Ack (handle_all batches those)."""
        if type(ev) is F.Goodbye:
            self._closing = True
            raise Closing
        await handlers.handle(self.server, self, ev)
