"""Every frame of protocol v1 as a frozen dataclass.

A frame on the wire is a msgpack map: key "t" holds the frame type number, the other keys are
the fields below (short keys keep frames compact). Optional fields equal to their default are
left out. Unknown keys are ignored, so later minor versions can add optional fields.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, cast, dataclass_transform

from .limits import (
    MAX_BODY_SIZE,
    MAX_CONV_LEN,
    MAX_HISTORY_PAGE,
    MAX_ID_LEN,
    MAX_MEDIA_PER_MESSAGE,
    MAX_PREVIEW_SIZE,
    MAX_TOKEN_LEN,
    MAX_UINT,
)
from .schema import Bin, Bool, Int, Kind, ListOf, Scalars, Spec, Str, Struct, f, specs_of

ID_PATTERN = r"[A-Za-z0-9_.\-]{1,64}"
CONV_PATTERN = rf"d:{ID_PATTERN}:{ID_PATTERN}|g:{ID_PATTERN}"

USER = Str(MAX_ID_LEN, ID_PATTERN)
DEVICE = Str(MAX_ID_LEN, ID_PATTERN)
GROUP = Str(MAX_ID_LEN, ID_PATTERN)
CLIENT_ID = Str(MAX_ID_LEN, min_len=1)
CONV = Str(MAX_CONV_LEN, CONV_PATTERN)
TEXT = Str()
UINT = Int()
SEQ = Int(1)
RID = Int(0, 2**32 - 1)
TIME_MS = Int()  # milliseconds since the Unix epoch
BODY = Bin(MAX_BODY_SIZE * 16)  # TOO_LARGE above MAX_BODY_SIZE is a semantic (non-fatal) error
USERS = ListOf(USER)


class Origin(enum.Flag):
    CLIENT = enum.auto()
    SERVER = enum.auto()
    BOTH = CLIENT | SERVER


class Status(enum.IntEnum):
    DELIVERED = 1
    READ = 2


class Mode(enum.IntEnum):
    TEMPORARY = 0  # the server forgets a message once every recipient device has it
    PERMANENT = 1  # history is kept and can be paged
    DISAPPEARING = 2  # messages expire for everyone after `ttl` seconds


class Frame:
    """Base of all frames. Subclasses are made with @frame."""

    __slots__ = ()
    TYPE: ClassVar[int]
    ORIGIN: ClassVar[Origin]
    SPEC: ClassVar[tuple[Spec, ...]]


FRAME_TYPES: dict[int, type[Frame]] = {}
T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(f,))
def record(cls: type[T]) -> type[T]:
    """A nested value (not a frame): frozen dataclass plus its field specs."""
    dc: Any = dataclasses.dataclass(frozen=True, slots=True)(cls)
    dc.SPEC = specs_of(dc)
    return cast("type[T]", dc)


@dataclass_transform(frozen_default=True, field_specifiers=(f,))
def frame(type_: int, origin: Origin) -> Callable[[type[T]], type[T]]:
    def wrap(cls: type[T]) -> type[T]:
        dc: Any = dataclasses.dataclass(frozen=True, slots=True)(cls)
        dc.TYPE = type_
        dc.ORIGIN = origin
        dc.SPEC = specs_of(dc)
        assert type_ not in FRAME_TYPES, type_
        FRAME_TYPES[type_] = dc
        return cast("type[T]", dc)

    return wrap


# ---- nested values -----------------------------------------------------------------------


@record
class Media:
    """A reference to an uploaded blob (image); the message body stays opaque."""

    id: str = f("id", Str(128, min_len=1))
    mime: str = f("mime", Str(100, r"[a-z]+/[A-Za-z0-9.+\-]+"))
    size: int = f("size", UINT)
    width: int = f("w", UINT, default=0)
    height: int = f("h", UINT, default=0)
    sha256: bytes = f("sha", Bin(32), default=b"")
    preview: bytes = f("pv", Bin(MAX_PREVIEW_SIZE), default=b"")  # small JPEG shown at once


MEDIA: Kind = ListOf(Struct(Media), MAX_MEDIA_PER_MESSAGE)


@record
class HistoryItem:
    seq: int = f("s", SEQ)
    ts: int = f("ts", TIME_MS)
    sender: str = f("f", USER)
    device: str = f("fd", DEVICE)
    id: str = f("id", CLIENT_ID)
    body: bytes = f("b", BODY, default=b"")
    media: tuple[Media, ...] = f("m", MEDIA, default=())
    event: dict[str, Any] | None = f("ev", Scalars(), default=None)


# ---- session -----------------------------------------------------------------------------


@frame(1, Origin.CLIENT)
class Hello(Frame):
    version: int = f("v", UINT)
    token: str = f("tok", Str(MAX_TOKEN_LEN, min_len=1))
    device: str = f("dev", DEVICE, default="default")
    client: str = f("cn", TEXT, default="")
    background: bool = f("bg", Bool(), default=False)  # system-initiated connect: not user activity


@frame(2, Origin.SERVER)
class Welcome(Frame):
    version: int = f("v", UINT)
    user: str = f("u", USER)
    device: str = f("dev", DEVICE)
    session: str = f("sid", Str(MAX_ID_LEN))
    server_time: int = f("now", TIME_MS)
    heartbeat_ms: int = f("hb", UINT)
    max_frame: int = f("mf", UINT)
    cursor: int = f("q", UINT, default=0)  # the device's acknowledged position in its inbox
    media_url: str = f("mu", Str(1024), default="")  # the node's HTTP base for media; "": none
    server: str = f("sv", Str(64), default="")  # the server's software/version, "chatd/0.2.0"


@frame(3, Origin.BOTH)
class Ping(Frame):
    nonce: int = f("n", UINT, default=0)


@frame(4, Origin.BOTH)
class Pong(Frame):
    nonce: int = f("n", UINT, default=0)


@frame(5, Origin.BOTH)
class Goodbye(Frame):
    code: int = f("code", UINT, default=0)
    reason: str = f("msg", TEXT, default="")


@frame(6, Origin.SERVER)
class Error(Frame):
    code: int = f("code", UINT)
    message: str = f("msg", Str(1024), default="")
    ref: str | None = f("ref", CLIENT_ID, default=None)  # client message id the error is about
    rid: int | None = f("r", RID, default=None)  # request id the error is about
    retry_ms: int | None = f("rt", UINT, default=None)


# ---- messages and receipts ---------------------------------------------------------------


@frame(10, Origin.CLIENT)
class Send(Frame):
    id: str = f("id", CLIENT_ID)
    to: str | None = f("to", USER, default=None)
    group: str | None = f("g", GROUP, default=None)
    body: bytes = f("b", BODY, default=b"")
    media: tuple[Media, ...] = f("m", MEDIA, default=())
    # the client id of an earlier send of this device to the same chat, not answered when
    # this one was made: refused for now if that one failed on this connection (PROTOCOL.md)
    after: str | None = f("af", CLIENT_ID, default=None)


@frame(11, Origin.SERVER)
class Sent(Frame):
    id: str = f("id", CLIENT_ID)
    conv: str = f("c", CONV)
    seq: int = f("s", SEQ)
    ts: int = f("ts", TIME_MS)


@frame(12, Origin.SERVER)
class Deliver(Frame):
    q: int = f("q", SEQ)  # position in the recipient's inbox: acknowledge with Ack(upto=q)
    conv: str = f("c", CONV)
    seq: int = f("s", SEQ)
    ts: int = f("ts", TIME_MS)
    sender: str = f("f", USER)
    device: str = f("fd", DEVICE)
    id: str = f("id", CLIENT_ID)
    body: bytes = f("b", BODY, default=b"")
    group: str | None = f("g", GROUP, default=None)
    media: tuple[Media, ...] = f("m", MEDIA, default=())
    event: dict[str, Any] | None = f("ev", Scalars(), default=None)  # server-made chat event


@frame(13, Origin.CLIENT)
class Ack(Frame):
    upto: int = f("q", UINT)  # cumulative: every inbox item with q <= upto is received


@frame(14, Origin.CLIENT)
class Read(Frame):
    conv: str = f("c", CONV)
    upto: int = f("s", SEQ)  # cumulative: every message of conv with seq <= upto is read


@frame(15, Origin.SERVER)
class Receipt(Frame):
    q: int = f("q", SEQ)
    conv: str = f("c", CONV)
    seqs: tuple[int, ...] = f("ss", ListOf(SEQ))
    by: str = f("by", USER)
    status: int = f("st", Int(1, 2))  # Status
    ts: int = f("ts", TIME_MS)
    all: bool = f("all", Bool(), default=False)  # groups: every member has reached this status


@frame(16, Origin.CLIENT)
class Sync(Frame):
    """Ask the server to send again everything after the device's acknowledged cursor."""


@frame(17, Origin.SERVER)
class Synced(Frame):
    upto: int = f("q", UINT)  # backlog sent up to here; from now on delivery is live


# ---- history -----------------------------------------------------------------------------


@frame(20, Origin.CLIENT)
class History(Frame):
    rid: int = f("r", RID)
    conv: str = f("c", CONV)
    before: int | None = f("before", SEQ, default=None)
    limit: int = f("n", Int(1, MAX_HISTORY_PAGE), default=50)


@frame(21, Origin.SERVER)
class HistoryPage(Frame):
    rid: int = f("r", RID)
    conv: str = f("c", CONV)
    items: tuple[HistoryItem, ...] = f("items", ListOf(Struct(HistoryItem), MAX_HISTORY_PAGE))
    more: bool = f("more", Bool(), default=False)


# ---- presence ----------------------------------------------------------------------------


@frame(30, Origin.CLIENT)
class PresenceSubscribe(Frame):
    users: tuple[str, ...] = f("us", USERS)


@frame(31, Origin.CLIENT)
class PresenceUnsubscribe(Frame):
    users: tuple[str, ...] = f("us", USERS)


@frame(32, Origin.CLIENT)
class LastSeenQuery(Frame):
    rid: int = f("r", RID)
    user: str = f("u", USER)


@frame(33, Origin.SERVER)
class Presence(Frame):
    user: str = f("u", USER)
    online: bool = f("on", Bool())
    last_seen: int | None = f("ls", TIME_MS, default=None)  # absent: unknown or hidden by the user
    rid: int | None = f("r", RID, default=None)  # set when answering a LastSeenQuery


@frame(34, Origin.CLIENT)
class SetPrivacy(Frame):
    rid: int = f("r", RID)
    last_seen: str = f("ls", Str(16, r"everyone|nobody"))


# ---- groups ------------------------------------------------------------------------------


@frame(40, Origin.CLIENT)
class GroupCreate(Frame):
    rid: int = f("r", RID)
    name: str = f("name", TEXT)
    members: tuple[str, ...] = f("us", USERS, default=())


@frame(41, Origin.CLIENT)
class GroupAdd(Frame):
    rid: int = f("r", RID)
    group: str = f("g", GROUP)
    users: tuple[str, ...] = f("us", USERS)


@frame(42, Origin.CLIENT)
class GroupRemove(Frame):
    rid: int = f("r", RID)
    group: str = f("g", GROUP)
    users: tuple[str, ...] = f("us", USERS)


@frame(43, Origin.CLIENT)
class GroupLeave(Frame):
    rid: int = f("r", RID)
    group: str = f("g", GROUP)


@frame(44, Origin.CLIENT)
class GroupRename(Frame):
    rid: int = f("r", RID)
    group: str = f("g", GROUP)
    name: str = f("name", TEXT)


@frame(45, Origin.CLIENT)
class GroupInfo(Frame):
    rid: int = f("r", RID)
    group: str = f("g", GROUP)


@frame(46, Origin.CLIENT)
class GroupList(Frame):
    rid: int = f("r", RID)


@frame(47, Origin.SERVER)
class Group(Frame):
    rid: int = f("r", RID)
    group: str = f("g", GROUP)
    name: str = f("name", TEXT)
    members: tuple[str, ...] = f("us", USERS)
    admins: tuple[str, ...] = f("ad", USERS)
    mode: int = f("mode", Int(0, 2), default=0)
    ttl: int = f("ttl", UINT, default=0)


@frame(48, Origin.SERVER)
class Groups(Frame):
    rid: int = f("r", RID)
    groups: tuple[str, ...] = f("gs", ListOf(GROUP))


# ---- chat modes and receipts queries -----------------------------------------------------


@frame(50, Origin.CLIENT)
class SetMode(Frame):
    rid: int = f("r", RID)
    conv: str = f("c", CONV)
    mode: int = f("mode", Int(0, 2))  # Mode
    ttl: int = f("ttl", Int(0, 10 * 365 * 86400), default=0)  # seconds, for DISAPPEARING


@frame(51, Origin.CLIENT)
class ReceiptQuery(Frame):
    rid: int = f("r", RID)
    conv: str = f("c", CONV)
    seq: int = f("s", SEQ)


@frame(52, Origin.SERVER)
class ReceiptState(Frame):
    rid: int = f("r", RID)
    conv: str = f("c", CONV)
    seq: int = f("s", SEQ)
    delivered: tuple[str, ...] = f("dl", USERS, default=())
    read: tuple[str, ...] = f("rd", USERS, default=())
    pending: tuple[str, ...] = f("pd", USERS, default=())


@frame(60, Origin.SERVER)
class Ok(Frame):
    rid: int = f("r", RID)


# ---- media -------------------------------------------------------------------------------


@frame(70, Origin.CLIENT)
class UploadSlot(Frame):
    """Ask where to upload a file of this SHA-256, size and MIME type (see Images)."""

    rid: int = f("r", RID)
    sha256: bytes = f("sha", Bin(32))
    size: int = f("size", UINT)
    mime: str = f("mime", Str(100, r"[a-z]+/[A-Za-z0-9.+\-]+"))


@frame(71, Origin.SERVER)
class Slot(Frame):
    """Either the content is already here (`m`: send it, upload nothing) or a PUT to `url`
    with `Authorization: Bearer <tok>` before `exp`; the PUT answers with the Media."""

    rid: int = f("r", RID)
    media: Media | None = f("m", Struct(Media), default=None)
    url: str = f("url", Str(1024), default="")
    token: str = f("tok", Str(MAX_TOKEN_LEN), default="")
    expires: int = f("exp", TIME_MS, default=0)


assert max(FRAME_TYPES) < 128 and MAX_UINT > 0
