"""The analytics events of this process: hooks the server calls, and a capped buffer.

Hooks are cheap no-ops until `start()` (called by the publisher task when the node has the
`analytics` setting); after it, each appends one small dict to a buffer of at most `cap`
events; one that finds it full is dropped and counted, so a slow or absent Redis never slows or
fails delivery. Like the Prometheus registry, there is one buffer per process (each worker has
its own and its own publisher).

An event is a flat map of short keys (Redis Stream fields): `k` its kind, `t` the server time
in ms, `u` the user; then, by kind:
  connect  d device
  send     c chat key, s seq, n body bytes, g 1 for a group chat, m media count,
           (w the words of a text body, only with analytics_content)
  deliver  l delay in ms from the message's arrival to its frame queued to this device
  read     c chat key, s the read watermark (the report joins it to the send: read delay)
  group    c chat key, a action (create, add, remove, leave, rename), x members concerned
  upload   n declared size, y MIME type (an upload slot granted; the HTTP upload follows)
A chat key is the group's conversation id for a group, and a 12-hex-digit hash of the
conversation id for a one-to-one chat (the report needs no pair of names).
"""

from __future__ import annotations

import collections
import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol

from chatd.core import convs, now_ms

DEFAULT_CAP: Final = 100_000  # events held while Redis is slow or away
MAX_WORDS: Final = 16  # words of one message kept (analytics_content)
WORD: Final = re.compile(r"[^\W\d_]{3,24}")

Event = dict[str, Any]


class EventBuffer:
    """Events waiting to be published, at most `cap`; `dropped` counts the ones refused."""

    def __init__(self, cap: int = DEFAULT_CAP, content: bool = False) -> None:
        self.cap = cap
        self.content = content
        self._events: collections.deque[Event] = collections.deque()
        self.dropped = 0
        self.added = 0

    def __len__(self) -> int:
        return len(self._events)

    def add(self, event: Event) -> None:
        if len(self._events) >= self.cap:
            self.dropped += 1
            return
        self._events.append(event)
        self.added += 1

    def take(self, n: int) -> list[Event]:
        """The n oldest events, removed from the buffer."""
        events = self._events
        return [events.popleft() for _ in range(min(n, len(events)))]


_buffer: EventBuffer | None = None


def start(cap: int = DEFAULT_CAP, content: bool = False) -> EventBuffer:
    """Turn the hooks on, into a new buffer."""
    return install(EventBuffer(cap, content))


def install(buffer: EventBuffer) -> EventBuffer:
    global _buffer
    _buffer = buffer
    return buffer


def stop() -> None:
    global _buffer
    _buffer = None


def chat_key(conv: str) -> str:
    if convs.is_group(conv):
        return conv
    return convs.DIRECT + hashlib.blake2b(conv.encode(), digest_size=6).hexdigest()


def words(body: bytes) -> str:
    """The words of a text body, lower case, space separated ("" if it is not UTF-8)."""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return ""
    return " ".join(w.lower() for w in WORD.findall(text)[:MAX_WORDS])


# ---- hooks (no-ops while analytics is off) -----------------------------------------------

class _Stored(Protocol):  # chatd.store.Appended
    @property
    def conv(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def duplicate(self) -> bool: ...


class _Sent(Protocol):  # chatd.core.NewMessage
    @property
    def body(self) -> bytes: ...
    @property
    def media(self) -> Any: ...


def connected(user: str, device: str) -> None:
    if _buffer is not None:
        _buffer.add({"k": "connect", "t": now_ms(), "u": user, "d": device})


def sent(user: str, msgs: Sequence[_Sent], results: Iterable[_Stored]) -> None:
    """A batch of sends committed (duplicates left out)."""
    buf = _buffer
    if buf is None:
        return
    t = now_ms()
    for m, r in zip(msgs, results, strict=True):
        if r.duplicate:
            continue
        ev = {"k": "send", "t": t, "u": user, "c": chat_key(r.conv), "s": r.seq,
              "n": len(m.body), "g": int(convs.is_group(r.conv)), "m": len(m.media or ())}
        if buf.content:  # (a caption, for an image)
            ev["w"] = words(m.body)
        buf.add(ev)


def delivered(user: str, ts: int) -> None:
    """A message that arrived at ts (ms) was queued to one of user's devices."""
    if _buffer is not None:
        t = now_ms()
        _buffer.add({"k": "deliver", "t": t, "u": user, "l": max(0, t - ts)})


def read(user: str, conv: str, upto: int) -> None:
    if _buffer is not None:
        _buffer.add({"k": "read", "t": now_ms(), "u": user, "c": chat_key(conv), "s": upto})


def group_changed(user: str, group: str, action: str, members: int = 0) -> None:
    if _buffer is not None:
        _buffer.add({"k": "group", "t": now_ms(), "u": user, "c": convs.of_group(group),
                     "a": action, "x": members})


def upload(user: str, size: int, mime: str) -> None:
    if _buffer is not None:
        _buffer.add({"k": "upload", "t": now_ms(), "u": user, "n": size, "y": mime})
