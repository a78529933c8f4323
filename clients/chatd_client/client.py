"""The chatd Python SDK: one object per device connection, reconnecting on its own.

    async with chatd_client.connect("tcp://127.0.0.1:7777", token=token) as c:
        ack = await c.send("bob", "hello")         # returns once the server stored it (SENT)
        async for event in c.events():              # Message, Delivered, Read, Synced, ...
            ...

Delivery from the server is at least once; the client drops repeats (by inbox position)
before the caller sees them. It acknowledges an item only once the application has taken its
event from `events()` / `next_event()`, so whatever the application has not taken comes back
after a reconnect, or to the next client of the same device. The events wait in a bounded
buffer: when the application falls behind, the client stops reading the socket (backpressure)
rather than drop anything, and the server's slow-consumer rule does the rest. Sends are
idempotent by their client id, so after a reconnect the client simply sends again whatever was
not yet SENT.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import random
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import trio
from trio_websocket import ConnectionTimeout, DisconnectionTimeout, HandshakeError

from chatd.protocol import (
    NEED_DATA,
    PEER_CLOSED,
    PROTOCOL_VERSION,
    Action,
    Connection,
    ErrorCode,
    Frame,
    ProtocolError,
    Role,
    State,
)
from chatd.protocol import frames as F
from chatd.util import single_errors

from . import events as ev
from . import media
from .transport import Link, open_link

EVENT_BUFFER = 10_000  # events waiting for the application before the client stops reading
SEND_RETRY_FOR = 60.0  # s a send the server failed (retryable, retry_ms) is sent again for
T = TypeVar("T")


class ChatdError(Exception):
    """The server refused something; `code` is an ErrorCode, `action` says what to do."""

    def __init__(self, code: int, message: str) -> None:
        try:
            self.name = ErrorCode(code).name
            self.action: Action | None = ErrorCode(code).action
        except ValueError:
            self.name, self.action = f"E{code}", None
        super().__init__(f"{self.name}: {message}")
        self.code = code
        self.message = message


class ConnectionLost(Exception):
    pass


class _Waiter:
    __slots__ = ("done", "error", "failing_since", "frame", "held", "result", "tries",
                 "written_on")

    def __init__(self, frame: Frame) -> None:
        self.frame = frame
        self.done = trio.Event()
        self.result: Any = None
        self.error: ChatdError | None = None
        self.tries = 0  # a send the server failed (INTERNAL with retry_ms): times sent again
        self.failing_since: float | None = None  # when it first failed so
        self.held = False  # a send waiting to be sent again (_send_again): not on the wire
        self.written_on = 0  # the connection (Client._links) it was last written on


class _EventBuffer:
    """The events waiting for the application, in order, each with its inbox position (0 for
    events that have none). The reader waits while it is full; the lifecycle events (Connected,
    Disconnected) and server errors are added whatever its size, so that the reconnect loop
    never waits for the application. They stay few: while the reader waits, the connection
    cannot end (nothing reads the socket), so no reconnect adds more."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("the event buffer needs room for at least one event")
        self.capacity = capacity
        self._items: deque[tuple[ev.Event, int]] = deque()
        self._closed = False
        self._getters = trio.lowlevel.ParkingLot()
        self._putters = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, event: ev.Event, q: int, give_up: Callable[[], bool]) -> bool:
        """Add the event, waiting while the buffer is full; False, without adding it, if
        give_up() is true while it is full (checked again at each wake_putters())."""
        if not await self.wait_room(self.capacity - 1, give_up):
            return False
        self.put_nowait(event, q)
        return True

    async def wait_room(self, most: int, give_up: Callable[[], bool]) -> bool:
        """Wait until at most `most` events are waiting; False as soon as give_up() is true
        (checked again at each wake_putters())."""
        while len(self._items) > most:
            if give_up():
                return False
            await self._putters.park()
        return True

    def put_nowait(self, event: ev.Event, q: int = 0) -> None:
        self._items.append((event, q))
        self._getters.unpark_all()

    def wake_putters(self) -> None:
        self._putters.unpark_all()

    async def get(self) -> tuple[ev.Event, int] | None:
        """The oldest event, waiting for one; None once closed and empty."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._items:
            if self._closed:
                return None
            await self._getters.park()
        item = self._items.popleft()
        self._putters.unpark_all()
        await trio.lowlevel.cancel_shielded_checkpoint()  # taken: not lost to a cancellation
        return item

    def close(self) -> None:
        """No more events will come; those already here can still be taken."""
        self._closed = True
        self._getters.unpark_all()


LOST = (ConnectionLost, trio.BrokenResourceError, trio.ClosedResourceError)
FATAL_CODES = {ErrorCode.UNAUTHENTICATED, ErrorCode.UNSUPPORTED_VERSION, ErrorCode.MALFORMED}


class Client:
    def __init__(self, urls: Sequence[str], token: str, device: str = "default", *,
                 ca_file: str | None = None, client_name: str = "chatd-py/0.1",
                 reconnect: bool = True, max_backoff: float = 5.0,
                 background: bool = False, event_buffer: int = EVENT_BUFFER,
                 send_retry_for: float = SEND_RETRY_FOR) -> None:
        self.urls = list(urls)
        self.token = token
        self.device = device
        self.ca_file = ca_file
        self.client_name = client_name
        self.reconnect = reconnect
        self.max_backoff = max_backoff
        self.send_retry_for = send_retry_for
        self.background = background
        self.user = ""
        self.session = ""
        self.url = ""
        self.media_url = ""  # the node's HTTP base for images (from Welcome); "": none
        self.server_version = ""  # the server's "chatd/0.2.0" (from Welcome); "": not told
        self._conn: Connection | None = None
        self._link: Link | None = None
        self._connected = trio.Event()
        self._write_lock = trio.Lock()
        self._pending: dict[str, _Waiter] = {}
        self._held = 0  # waiters in _pending held to be sent again
        self._links = 0  # connections welcomed so far (the current one's number)
        self._last_send: dict[tuple[str | None, str | None], str] = {}  # chat -> latest send
        self._requests: dict[int, _Waiter] = {}
        self._rids = itertools.count(1)
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(4)
        self._events = _EventBuffer(event_buffer)
        self._max_q = 0  # highest inbox position buffered: anything at or below is a repeat
        self._taken = 0  # highest inbox position the application has taken
        self._acked = 0  # highest position the server has from this connection (or Welcome)
        self._ack_wake = trio.Event()
        self._aside = False  # items were set aside on this connection: get them again
        self._resync = False  # the connection is ending to get them
        self._waiting = 0  # tasks waiting for an answer (SENT, or a request's)
        self._shown_connected = False  # the application was told Connected, not Disconnected
        self._session_scope: trio.CancelScope | None = None
        self._session_tasks: trio.Nursery | None = None  # tasks of the current connection
        self._fatal: BaseException | None = None
        self.heartbeat = 30.0
        self.reconnects = 0
        self.resyncs = 0  # connections renewed to get again what did not fit the buffer
        self._watching: set[str] = set()  # watched again after a reconnect

    # ---- public API ------------------------------------------------------------------------

    def new_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    async def send(self, to: str | None, body: bytes | str, *, group: str | None = None,
                   media: tuple[F.Media, ...] = (), id: str | None = None) -> ev.SentAck:
        """Send a message; returns once the server stored it durably (SENT). Raises
        ChatdError if the server refused it, or kept failing it (see _retry_delay)."""
        data = body.encode() if isinstance(body, str) else body
        # the chat's latest send, if not SENT yet: should it fail, the server refuses this
        # one too, and both go again in this order (PROTOCOL.md, "A chat's sends keep ...")
        before = self._last_send.get((to, group))
        frame = F.Send(id=id or self.new_id(), to=to, group=group, body=data, media=media,
                       after=before if before in self._pending else None)
        self._last_send[to, group] = frame.id
        waiter = self._pending.setdefault(frame.id, _Waiter(frame))
        if self._held and self._held_back(frame):
            self._hold(waiter)  # sent after the earlier sends of its chat (see _send_again)
        else:
            await self._write_send(waiter)
        return await self._wait(waiter)  # type: ignore[no-any-return]

    async def send_image(self, to: str | None, path: str, caption: bytes | str = b"", *,
                         group: str | None = None, id: str | None = None) -> ev.SentAck:
        """Upload the image file (unless the server has it already) and send it; the server
        re-encodes it (metadata stripped) and the message carries a small preview."""
        image = await media.upload(self, path)
        return await self.send(to, caption, group=group, media=(image,), id=id)

    async def upload_image(self, path: str) -> F.Media:
        """The Media reference for the image file, uploaded if the server lacks it."""
        return await media.upload(self, path)

    async def download(self, image: F.Media, path: str) -> str:
        """Save a received image (full size) to path; MediaError if it is not there."""
        return await media.download(self, image, path)

    async def mark_read(self, conv: str, upto: int) -> None:
        await self._write_when_connected(F.Read(conv=conv, upto=upto))

    async def history(self, conv: str, before: int | None = None,
                      limit: int = 50) -> F.HistoryPage:
        page = await self.request(lambda rid: F.History(rid=rid, conv=conv, before=before,
                                                        limit=limit))
        assert isinstance(page, F.HistoryPage)
        return page

    # ---- groups: each returns the group as it is after the change ------------------------

    async def create_group(self, name: str, members: Sequence[str] = ()) -> F.Group:
        return await self._ask(F.Group, lambda r: F.GroupCreate(rid=r, name=name,
                                                                  members=tuple(members)))

    async def add_members(self, group: str, users: Sequence[str]) -> F.Group:
        return await self._ask(F.Group, lambda r: F.GroupAdd(rid=r, group=group,
                                                               users=tuple(users)))

    async def remove_members(self, group: str, users: Sequence[str]) -> F.Group:
        return await self._ask(F.Group, lambda r: F.GroupRemove(rid=r, group=group,
                                                                  users=tuple(users)))

    async def rename_group(self, group: str, name: str) -> F.Group:
        return await self._ask(F.Group, lambda r: F.GroupRename(rid=r, group=group, name=name))

    async def group_info(self, group: str) -> F.Group:
        return await self._ask(F.Group, lambda r: F.GroupInfo(rid=r, group=group))

    async def leave_group(self, group: str) -> None:
        await self._ask(F.Ok, lambda r: F.GroupLeave(rid=r, group=group))

    async def my_groups(self) -> list[str]:
        return list((await self._ask(F.Groups, lambda r: F.GroupList(rid=r))).groups)

    async def receipt_state(self, conv: str, seq: int) -> F.ReceiptState:
        """Who has the message (delivered), who read it, who has neither yet."""
        return await self._ask(F.ReceiptState,
                               lambda r: F.ReceiptQuery(rid=r, conv=conv, seq=seq))

    async def set_mode(self, conv: str, mode: int, ttl: int = 0) -> None:
        """TEMPORARY (0), PERMANENT (1) or DISAPPEARING (2, messages expire after ttl s)."""
        await self._ask(F.Ok, lambda r: F.SetMode(rid=r, conv=conv, mode=mode, ttl=ttl))

    # ---- presence ------------------------------------------------------------------------

    async def watch(self, users: Sequence[str]) -> None:
        """Get a Presence event for each user now, and whenever they come and go."""
        await self._write_when_connected(F.PresenceSubscribe(users=tuple(users)))
        self._watching.update(users)

    async def unwatch(self, users: Sequence[str]) -> None:
        self._watching.difference_update(users)
        await self._write_when_connected(F.PresenceUnsubscribe(users=tuple(users)))

    async def last_seen(self, user: str) -> ev.Presence:
        p = await self._ask(F.Presence, lambda r: F.LastSeenQuery(rid=r, user=user))
        return ev.Presence(p.user, p.online, p.last_seen)

    async def hide_last_seen(self, hide: bool = True) -> None:
        await self._ask(F.Ok, lambda r: F.SetPrivacy(rid=r, last_seen="nobody" if hide
                                                     else "everyone"))

    async def _ask(self, kind: type[T], make: Any) -> T:
        answer = await self.request(make)
        assert isinstance(answer, kind), answer
        return answer

    async def request(self, make: Any) -> Frame:
        """Send a request frame built by make(rid) and wait for its answer.

        Answers (and SENT acks) go straight to whoever waits for them, never through the event
        buffer, and they come while that buffer is full, even to the task that takes the
        events: as long as a send or request awaits its answer, the client keeps reading the
        socket, setting aside (unacknowledged) the events that do not fit. Once nothing is
        awaited and the application has taken half the buffer, it reconnects, without telling
        the application, and the server sends those events again."""
        rid = next(self._rids)
        waiter = _Waiter(make(rid))
        self._requests[rid] = waiter
        try:
            await self._write_when_connected(waiter.frame)
            return await self._wait(waiter)  # type: ignore[no-any-return]
        finally:
            self._requests.pop(rid, None)

    async def events(self) -> AsyncIterator[ev.Event]:
        """Every event in order. Ends when the client stops for good (raising why).

        An event is taken once this yields it: only then is its inbox item acknowledged to the
        server (cumulatively, in order). Events not taken stay in the buffer (at most
        `event_buffer` of them; then the client stops reading the socket) and, for Message,
        Delivered and Read, on the server, which sends them again to the next connection if
        this one ends first."""
        while (item := await self._events.get()) is not None:
            event, q = item
            if q > self._taken:
                self._taken = q
                self._ack_wake.set()
            if self._aside:
                self._maybe_resync()
            yield event
        if self._fatal is not None:
            raise self._fatal

    async def next_event(self, *types: type) -> ev.Event:
        """The next event of one of the given types (any, if none given). Events of other
        types before it are skipped: like any event events() gives, they count as taken."""
        async for event in self.events():
            if not types or isinstance(event, types):
                return event
        raise ConnectionLost("client stopped")

    # ---- internals -------------------------------------------------------------------------

    async def _wait(self, waiter: _Waiter) -> Any:
        self._waiting += 1
        self._events.wake_putters()  # the reader must keep reading (see request())
        try:
            while not waiter.done.is_set():
                if self._fatal is not None:
                    raise self._fatal
                with trio.move_on_after(0.5):
                    await waiter.done.wait()
        finally:
            self._waiting -= 1
            self._maybe_resync()
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    async def _write_send(self, waiter: _Waiter) -> None:
        """Write a new send once connected, unless the connection's start wrote it already
        with the others not SENT yet (a send made while disconnected was written twice).
        Connected, it takes the write lock (FIFO) with no checkpoint before it, so sends are
        written, and numbered, in the order send() was called: trio runs a batch of ready
        tasks in either order, so a checkpoint here let a later send overtake."""
        if self._fatal is not None:
            raise self._fatal
        if not self._connected.is_set():
            await self._connected.wait()
        if waiter.written_on == self._links:
            return
        waiter.written_on = self._links
        with contextlib.suppress(*LOST):  # (the next connection writes it with the others)
            await self._write(waiter.frame)

    async def _write_when_connected(self, frame: Frame) -> None:
        while True:
            if self._fatal is not None:
                raise self._fatal
            await self._connected.wait()
            try:
                await self._write(frame)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionLost):
                await trio.sleep(0.01)  # the supervisor reconnects; frames in _pending resend

    async def _write(self, frame: Frame | None, *more: Frame) -> None:
        """Write frame (None: nothing but the Ack) and more, after an Ack for what the
        application has taken if the server does not have it yet: an Ack goes before a Read
        or a Goodbye. Nothing else is written in between."""
        async with self._write_lock:
            conn, link = self._conn, self._link
            if conn is None or link is None or conn.state is State.CLOSED:
                raise ConnectionLost("not connected")
            upto = self._taken
            if upto > self._acked:
                await link.send(conn.send(F.Ack(upto=upto)))
                self._acked = upto
            if frame is not None:
                await link.send(conn.send(frame))
            for f in more:
                await link.send(conn.send(f))

    def _awaiting(self) -> bool:
        """A task waits for an answer (so the reader must keep reading)."""
        return self._waiting > 0

    def _maybe_resync(self) -> bool:
        """End the connection if events were set aside, no answer is awaited any more and
        the application has taken half the buffer (so that what comes again is worth it)."""
        if (self._aside and not self._awaiting() and self._session_scope is not None
                and len(self._events) <= self._events.capacity // 2):
            self._resync = True
            self._session_scope.cancel()
            return True
        return False

    async def _take_in(self, q: int, event: ev.Event) -> None:
        """Buffer an event for the application (q: its inbox position, 0 if none). While the
        buffer is full the reader waits here, so the socket is not read (backpressure). But
        while a task awaits an answer the reader must keep reading: an event that does not
        fit is then set aside instead (dropped, not acknowledged), and so is every later one
        on this connection (no gaps: positions at or below the highest buffered count as
        repeats). The reader then waits again until an answer is awaited, or until the
        application has taken half the buffer: then the connection is renewed
        (_maybe_resync) and the server sends them again; Presence and Synced too."""
        if q and q <= self._max_q:
            return  # a repeat: the application has it already, or will, in order
        if not self._aside:
            if await self._events.put(event, q, self._awaiting):
                if q:
                    self._max_q = q
                return
            self._aside = True
        await self._events.wait_room(self._events.capacity // 2, self._awaiting)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, and keep reconnecting with backoff until cancelled or refused for good."""
        started = False
        backoff = 0.05
        pick = 0  # which URL: a renewed connection (resync) goes back to the same one
        try:
            for attempt in itertools.count():
                url = self.urls[pick % len(self.urls)]
                reason = ""
                try:
                    async with open_link(url, self.ca_file) as link:
                        await self._session(url, link, None if started else task_status)
                        reason = "connection closed"
                except ChatdError as exc:
                    if exc.code in FATAL_CODES or not self.reconnect:
                        raise
                    reason = str(exc)
                except (OSError, trio.TooSlowError, trio.BrokenResourceError,
                        ConnectionLost, ProtocolError) as exc:
                    cause = exc.__cause__ or exc
                    reason = f"{type(cause).__name__}: {cause}"
                    if not started and attempt + 1 >= len(self.urls) and not self.reconnect:
                        raise ConnectionLost(f"cannot connect to {url}: {reason}") from exc
                except (HandshakeError, ConnectionTimeout, DisconnectionTimeout) as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                if self._conn is not None:
                    started = True
                self._conn = self._link = self._session_scope = self._session_tasks = None
                if self._connected.is_set():
                    self._connected = trio.Event()
                resync, self._resync = self._resync, False
                self._aside = False  # the next connection starts again from the server's cursor
                if resync:
                    self.resyncs += 1
                    continue  # renewed to get what was set aside: at once, and quietly
                if self._shown_connected:
                    self._shown_connected = False
                    self._events.put_nowait(ev.Disconnected(reason))
                if not self.reconnect and started:
                    raise ConnectionLost(reason)
                if not started and attempt + 1 >= len(self.urls) * 3:
                    raise ConnectionLost(f"cannot connect to {', '.join(self.urls)}: {reason}")
                await trio.sleep(backoff * (0.5 + random.random()))
                backoff = min(self.max_backoff, backoff * 2)
                self.reconnects += 1
                pick += 1
        except BaseException as exc:
            self._fatal = exc if isinstance(exc, Exception) else ConnectionLost("client stopped")
            raise
        finally:
            self._events.close()

    async def _read_frame(self, conn: Connection, link: Link, timeout: float) -> Frame | None:
        while True:
            frame = conn.next_event()
            if frame is PEER_CLOSED:
                return None
            if frame is not NEED_DATA:
                assert isinstance(frame, Frame)
                return frame
            with trio.fail_after(timeout):
                conn.receive_data(await link.receive())

    async def _session(self, url: str, link: Link,
                       task_status: trio.TaskStatus[None] | None) -> None:
        conn = Connection(Role.CLIENT, link.framing)
        await link.send(conn.send(F.Hello(version=PROTOCOL_VERSION, token=self.token,
                                          device=self.device, client=self.client_name,
                                          background=self.background)))
        first = await self._read_frame(conn, link, 15)
        if first is None:
            raise ConnectionLost("server closed during handshake")
        if isinstance(first, F.Error):
            raise ChatdError(first.code, first.message)
        assert isinstance(first, F.Welcome)
        self.user, self.session, self.url = first.user, first.session, url
        self.device = first.device
        self.heartbeat = first.heartbeat_ms / 1000
        self.media_url = first.media_url
        self.server_version = first.server  # e.g. "chatd/0.2.0" ("" from older servers)
        self._acked = first.cursor  # what the app took beyond it is acknowledged again
        self._conn, self._link = conn, link
        self._links += 1
        self._connected.set()
        if not self._shown_connected:  # (a resync is not news to the application)
            self._shown_connected = True
            self._events.put_nowait(ev.Connected(first.user, first.device, first.session))
        if task_status is not None:
            task_status.started()
        with single_errors():
            async with trio.open_nursery() as nursery:
                self._session_scope = nursery.cancel_scope
                self._session_tasks = nursery
                nursery.start_soon(self._heartbeat)
                nursery.start_soon(self._acker)
                if self._taken > self._acked:
                    self._ack_wake.set()
                # not yet SENT: sent again, in the order they were made, in one go (a send
                # made meanwhile waits for the write lock and goes after them)
                again = [w.frame for w in self._pending.values()]
                for w in self._pending.values():
                    w.held = False
                    w.written_on = self._links  # (its own task need not write it too)
                self._held = 0
                again += [w.frame for w in self._requests.values()]
                if again:
                    await self._write(*again)
                if self._watching:
                    await self._write(F.PresenceSubscribe(users=tuple(self._watching)))
                while True:
                    frame = await self._read_frame(conn, link, self.heartbeat * 2 + 5)
                    if frame is None:
                        break
                    await self._on_frame(frame)
                    if self._maybe_resync():
                        break
                nursery.cancel_scope.cancel()

    async def _heartbeat(self) -> None:
        with contextlib.suppress(*LOST):  # the reader notices a lost connection too
            for n in itertools.count():
                await trio.sleep(self.heartbeat)
                await self._write(F.Ping(nonce=n))

    async def _acker(self) -> None:
        """Acknowledge what the application has taken (events() wakes it)."""
        with contextlib.suppress(*LOST):
            while True:
                await self._ack_wake.wait()
                self._ack_wake = trio.Event()
                if self._taken > self._acked:
                    await self._write(None)

    async def _on_frame(self, frame: Frame) -> None:
        if isinstance(frame, F.Deliver):
            if frame.q > self._max_q:
                await self._take_in(frame.q, ev.Message(
                    frame.conv, frame.seq, frame.ts, frame.sender, frame.device, frame.id,
                    frame.body, frame.group, frame.media, frame.event))
        elif isinstance(frame, F.Receipt):
            if frame.q > self._max_q:
                kind = ev.Delivered if frame.status == F.Status.DELIVERED else ev.Read
                await self._take_in(frame.q, kind(frame.conv, frame.seqs, frame.by, frame.ts))
        elif isinstance(frame, F.Sent):
            waiter = self._settle(frame.id)
            if waiter is not None:
                waiter.result = ev.SentAck(frame.id, frame.conv, frame.seq, frame.ts)
                waiter.done.set()
        elif isinstance(frame, F.Presence) and frame.rid is None:
            await self._take_in(0, ev.Presence(frame.user, frame.online, frame.last_seen))
        elif isinstance(frame, F.Synced):
            await self._take_in(0, ev.Synced(frame.upto))
        elif isinstance(frame, F.Ping):
            await self._write(F.Pong(nonce=frame.nonce))
        elif isinstance(frame, F.Error):
            await self._on_error(frame)
        elif isinstance(frame, F.Goodbye):
            self.reconnect = False
            raise ChatdError(0, f"server said goodbye: {frame.reason}")
        elif (rid := getattr(frame, "rid", None)) is not None and rid in self._requests:
            waiter = self._requests.pop(rid)
            waiter.result = frame
            waiter.done.set()

    async def _on_error(self, frame: F.Error) -> None:
        error = ChatdError(frame.code, frame.message)
        if frame.ref is not None and frame.ref in self._pending:
            delay = self._retry_delay(self._pending[frame.ref], frame)
            if delay is not None:  # sent again later, under the same id
                self._hold(self._pending[frame.ref])
                if self._session_tasks is not None:  # (the reader does not wait for it)
                    self._session_tasks.start_soon(self._send_again, delay)
                return
            waiter = self._settle(frame.ref)
            assert waiter is not None
            self._given_up(waiter)
            waiter.error = error
            waiter.done.set()
            return
        if frame.rid is not None and frame.rid in self._requests:
            waiter = self._requests.pop(frame.rid)
            waiter.error = error
            waiter.done.set()
            return
        self._events.put_nowait(ev.ServerError(frame.code, error.name, frame.message, frame.ref))
        if frame.code in FATAL_CODES:
            raise error

    def _retry_delay(self, waiter: _Waiter, frame: F.Error) -> float | None:
        """Seconds after which to send a refused send again, or None: it failed for good.
        RATE_LIMITED: after retry_ms, always. A server failure (INTERNAL with retry_ms: the
        store did not take it, e.g. the chat's owner did not answer): after retry_ms,
        doubling up to max_backoff, for send_retry_for seconds after its first failure; then
        send() raises the error. The same id makes a send that did apply a duplicate."""
        if frame.code == ErrorCode.RATE_LIMITED:
            return (frame.retry_ms or 100) / 1000
        if frame.code != ErrorCode.INTERNAL or frame.retry_ms is None:
            return None
        now = trio.current_time()
        if waiter.failing_since is None:
            waiter.failing_since = now
        elif now - waiter.failing_since >= self.send_retry_for:
            return None
        waiter.tries += 1
        first = frame.retry_ms / 1000
        return max(first, min(self.max_backoff, first * 2.0 ** (waiter.tries - 1)))

    def _hold(self, waiter: _Waiter) -> None:
        if not waiter.held:
            waiter.held = True
            self._held += 1

    def _held_back(self, frame: F.Send) -> bool:
        """Whether an earlier send of the same chat waits to be sent again."""
        return any(w.held and isinstance(w.frame, F.Send) and w.frame.to == frame.to
                   and w.frame.group == frame.group for w in self._pending.values())

    def _settle(self, ref: str) -> _Waiter | None:
        waiter = self._pending.pop(ref, None)
        if waiter is None:
            return None
        if waiter.held:
            self._held -= 1
        frame = waiter.frame
        assert isinstance(frame, F.Send)
        chat = (frame.to, frame.group)
        if self._last_send.get(chat) == ref:  # the latest left of that chat, if any, is now
            del self._last_send[chat]
            for w in self._pending.values():
                if isinstance(w.frame, F.Send) and (w.frame.to, w.frame.group) == chat:
                    self._last_send[chat] = w.frame.id
        return waiter

    def _given_up(self, waiter: _Waiter) -> None:
        """A send failed for good: the sends made after it follow what it followed."""
        gone = waiter.frame
        assert isinstance(gone, F.Send)
        for w in self._pending.values():
            if isinstance(w.frame, F.Send) and w.frame.after == gone.id:
                w.frame = dataclasses.replace(w.frame, after=gone.after)

    async def _send_again(self, delay: float) -> None:
        """After delay, send again every send held (not only the one whose error scheduled
        this), in the order the application made them, in one write, so that the server
        numbers a device's sends to a chat in that order: each with its own backoff, a send
        that failed more often used to go after later ones (and so did a send made while
        an earlier one of its chat waited: it is held with it, see send)."""
        await trio.sleep(delay)
        held = [w for w in self._pending.values() if w.held]
        for w in held:
            w.held = False
        self._held -= len(held)
        if held:
            with contextlib.suppress(*LOST):  # (after a reconnect it is sent again anyway)
                await self._write(*(w.frame for w in held))

    async def goodbye(self) -> None:
        """Say goodbye (after acknowledging what the application took), even when cancelled."""
        if self._conn is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                try:
                    await self._write(F.Goodbye())
                except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionLost):
                    pass


@contextlib.asynccontextmanager
async def connect(url: str | Sequence[str], token: str, device: str = "default",
                  **options: Any) -> AsyncIterator[Client]:
    """Connect (to the first URL that answers) and keep the connection up while in use."""
    urls = [url] if isinstance(url, str) else list(url)
    client = Client(urls, token, device, **options)
    with single_errors():
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            try:
                yield client
            finally:
                await client.goodbye()
                nursery.cancel_scope.cancel()
