"""Request handlers: what the server does with each frame a device sends.

One function per frame type, in `HANDLERS` (Sends and Acks are batched by the session and
come through `sends` and the store's ack). A handler checks the request against the chat
rules (chatd.core), asks the store, and answers the device; it sees the node and the device
only through the small protocols of chatd.server.node.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from chatd.analytics import events as analytics
from chatd.core import GroupInfo, NewMessage, Refusal, convs, modes, now_ms
from chatd.core import groups as group_rules
from chatd.core.delivery import RefusedForNow
from chatd.protocol import MAX_BODY_SIZE, ErrorCode, Frame
from chatd.protocol import frames as F
from chatd.store import StoreError

from . import metrics
from .node import Device, Node

log = logging.getLogger("chatd")
HISTORY_BUDGET: Final = 768 * 1024  # bytes of bodies in one history page
RETRY_S: Final = 1.0  # an Ack or a Read the store failed is stored again after this
RETRY_FOR: Final = 15.0  # ... for this long; then its error ends the connection
SEND_RETRY_MS: Final = 500  # a send the store did not take: sent again after this (ms)
# Requests whose answer can be large: refused while the connection's queue is backed up.
LARGE_ANSWERS: Final = (F.History, F.GroupInfo, F.GroupList, F.GroupCreate, F.GroupAdd,
                        F.GroupRemove, F.ReceiptQuery, F.PresenceSubscribe)

Handler = Callable[[Node, Device, Any], Awaitable[None]]


def refuse(dev: Device, refusal: Refusal, ref: str | None = None,
           rid: int | None = None) -> None:
    dev.error(refusal.code, refusal.message, ref=ref, rid=rid)


def refused(node: Node, dev: Device, ev: Frame) -> bool:
    """Whether a request is refused by a limit (its RATE_LIMITED error is sent)."""
    kind = type(ev)
    rid = getattr(ev, "rid", None)
    if kind in LARGE_ANSWERS and dev.backed_up:
        node.stats["refused_backed_up"] += 1
        metrics.LIMITED.labels("backed_up").inc()
        dev.error(ErrorCode.RATE_LIMITED, "answers are waiting to be read: read them first",
                  rid=rid, retry_ms=1000)
        return True
    cost = 1 + len(ev.users) // 64 if isinstance(ev, F.PresenceSubscribe) else 1
    wait = node.limits.requests.take(dev.user, trio.current_time(), cost)
    if not wait and kind is F.GroupCreate:
        wait = node.limits.group_creates.take(dev.user, trio.current_time())
    if wait:
        dev.pause()  # (refusing what it sends meanwhile costs more)
        node.stats["rate_limited"] += 1
        metrics.LIMITED.labels(kind.__name__).inc()
        dev.error(ErrorCode.RATE_LIMITED, f"too many {kind.__name__} requests", rid=rid,
                  retry_ms=wait)
        return True
    return False


async def group_for(node: Node, dev: Device, group: str, rid: int | None = None,
                    ref: str | None = None) -> GroupInfo | None:
    """The group if the device's user is a member; otherwise answer with the error, None."""
    info = await node.store.group(group)
    problem = group_rules.member_problem(group, info, dev.user)
    if problem is not None:
        refuse(dev, problem, ref=ref, rid=rid)
        return None
    return info


async def may_access(node: Node, dev: Device, conv: str, rid: int | None = None) -> bool:
    """Whether conv is a conversation id as the server writes it, of a conversation this
    user takes part in (checked now: membership can change)."""
    group = convs.group_of(conv)
    if group is not None:
        return await group_for(node, dev, group, rid=rid) is not None
    users = convs.canonical_pair(conv)
    if users is None:
        dev.error(ErrorCode.INVALID, f"{conv!r} is not a conversation id ({convs.describe()})",
                  rid=rid)
        return False
    if dev.user not in users:
        dev.error(ErrorCode.FORBIDDEN, f"not a member of {conv}", rid=rid)
        return False
    other = users[1] if users[0] == dev.user else users[0]
    if not await node.user_exists(other):
        dev.error(ErrorCode.UNKNOWN_TARGET, f"no user {other!r}", rid=rid)
        return False
    return True


# ---- sends -----------------------------------------------------------------------------

async def _check_send(node: Node, dev: Device, ev: F.Send,
                      groups: dict[str, Refusal | None]) -> bool:
    """Validate one send; on a problem, answer with its error and return False. `groups`
    remembers membership checks within one batch of sends (one store call per group)."""
    wait = node.limits.sends.take(dev.user, trio.current_time())
    if wait:
        dev.pause()  # (refusing what it sends meanwhile costs more)
        node.stats["rate_limited"] += 1
        refuse_for_now(dev, ErrorCode.RATE_LIMITED, "sending too fast", ev.id, wait)
        return False
    if (ev.to is None) == (ev.group is None):
        dev.error(ErrorCode.INVALID, "send needs exactly one of 'to' and 'g'", ref=ev.id)
        return False
    if len(ev.body) > MAX_BODY_SIZE:
        dev.error(ErrorCode.TOO_LARGE, f"body of {len(ev.body)} bytes, limit {MAX_BODY_SIZE}",
                  ref=ev.id)
        return False
    if ev.group is not None:
        if ev.group not in groups:
            groups[ev.group] = group_rules.member_problem(
                ev.group, await node.store.group(ev.group), dev.user)
        problem = groups[ev.group]
        if problem is not None:
            refuse(dev, problem, ref=ev.id)
        return problem is None
    if not await node.user_exists(ev.to):  # type: ignore[arg-type]
        dev.error(ErrorCode.UNKNOWN_TARGET, f"no user {ev.to!r}", ref=ev.id)
        return False
    return True


async def _check_media(node: Node, dev: Device, ev: F.Send, conv: str) -> bool:
    """A send's media references: previews bounded with the body; with a media service,
    each an uploaded blob, recorded as referenced by conv (its members may download)."""
    from chatd.media.blobs import BlobStoreError

    if len(ev.body) + sum(len(m.preview) for m in ev.media) > MAX_BODY_SIZE:
        dev.error(ErrorCode.TOO_LARGE, f"body and previews over {MAX_BODY_SIZE} bytes",
                  ref=ev.id)
        return False
    media = node.media
    if media is None:
        return True
    try:
        for m in ev.media:
            if not await media.reference(m.id, conv, dev.user, now_ms()):
                dev.error(ErrorCode.INVALID, f"no uploaded media {m.id[:64]!r}", ref=ev.id)
                return False
    except BlobStoreError as exc:
        refuse_for_now(dev, ErrorCode.INTERNAL, f"media store unavailable: {exc}", ev.id, 1000)
        return False
    return True


def refuse_for_now(dev: Device, code: ErrorCode, message: str, client_id: str,
                   retry_ms: int) -> None:
    """Refuse a send that the device is to send again after retry_ms, under its id; the
    sends it made after it in the same chat are refused with it (RefusedForNow)."""
    if dev.refused is None:
        dev.refused = RefusedForNow()
    dev.refused.add(client_id, code, retry_ms)
    dev.error(code, message, ref=client_id, retry_ms=retry_ms)


async def sends(node: Node, dev: Device, batch: list[F.Send]) -> None:
    """A run of consecutive Sends: checked one by one, stored with one write, each answered
    with its Sent (or its error). When the store fails (e.g. the chat's owner, another node,
    did not answer in time), each send of the batch not answered yet gets a retryable
    INTERNAL error with its client id and a retry delay, and the connection stays open: the
    device sends them again under the same ids (one that did apply is then a duplicate).
    A send that names (`after`) an earlier send of its chat refused for now on this
    connection is refused with it, so that the retries keep the order (RefusedForNow)."""
    ts = now_ms()
    msgs, ids = [], []
    groups: dict[str, Refusal | None] = {}
    checked = 0  # sends of the batch answered (refused) or in msgs
    try:
        for ev in batch:
            if dev.refused:  # (only a device some of whose sends were refused for now)
                earlier = dev.refused.taken_up(ev.id, ev.after)
                if earlier is not None:
                    refuse_for_now(dev, ErrorCode(earlier[0]), f"the send before it in this chat, "
                                   f"{ev.after}, was refused: it goes first", ev.id, earlier[1])
                    checked += 1
                    continue
            if not await _check_send(node, dev, ev, groups):
                checked += 1
                continue
            recipients: tuple[str, ...] = ()  # for a group, the store fans out to members
            if ev.group is not None:
                conv = convs.of_group(ev.group)
            else:
                assert ev.to is not None
                conv = convs.direct(dev.user, ev.to)
                recipients = convs.others(conv, dev.user)
            if ev.media and not await _check_media(node, dev, ev, conv):
                checked += 1
                continue
            msgs.append(NewMessage(
                sender=dev.user, device=dev.device, client_id=ev.id, conv=conv,
                recipients=recipients, body=ev.body, ts=ts, media=ev.media, group=ev.group))
            ids.append(ev.id)
            checked += 1
        if not msgs:
            return
        # Finished even if the connection ends meanwhile (the device went away, a drop): a
        # send cut short between its store steps left its seq to no running send, the
        # chat's later sends went on, and its retry finished it after them (with owner
        # numbering). The retry finds it stored. Only a stopping node cancels it (finishing).
        with trio.CancelScope(shield=True) as scope:
            node.finishing.add(scope)
            try:
                results = await node.store.append_messages(msgs)
            finally:
                node.finishing.discard(scope)
        if scope.cancelled_caught:
            raise StoreError("the node is stopping")
    except StoreError as exc:  # those checked, the one being checked, and the rest
        failed = ids + [ev.id for ev in batch[checked:]]
        node.stats["send_failures"] += len(failed)
        metrics.SEND_FAILURES.inc(len(failed))
        for cid in failed:
            refuse_for_now(dev, ErrorCode.INTERNAL, str(exc), cid, SEND_RETRY_MS)
        return
    node.stats["messages_in"] += len(msgs)
    metrics.MESSAGES_IN.inc(sum(1 for r in results if not r.duplicate))
    analytics.sent(dev.user, msgs, results)
    for cid, r in zip(ids, results, strict=True):
        dev.send_frame(F.Sent(id=cid, conv=r.conv, seq=r.seq, ts=r.ts))


async def again_on_failure(call: Callable[[], Awaitable[object]], what: str) -> None:
    """An Ack or a Read: a write that only raises a watermark, so running it again is
    harmless. One the store fails (e.g. the owner of an inbox its receipts go to restarting,
    for a few seconds) is run again every RETRY_S, and its StoreError (which ends the
    connection) is raised only after RETRY_FOR. It used to end the connection at once: a
    device whose every new connection began with such a write could not stay connected
    until the store recovered, and its sends were cut short each time (docs/RELIABILITY.md,
    finding 6 (h)). Frames after it that must follow it wait meanwhile; the node answers
    the device's pings for the connection (Session.check_timeouts)."""
    give_up = trio.current_time() + RETRY_FOR
    while True:
        try:
            await call()
            return
        except StoreError as exc:
            if trio.current_time() >= give_up:
                raise
            log.info("%s failed, trying again: %s", what, exc)
        await trio.sleep(RETRY_S)


# ---- one handler per frame type ----------------------------------------------------------

async def read(node: Node, dev: Device, ev: F.Read) -> None:
    if await may_access(node, dev, ev.conv):
        await again_on_failure(
            lambda: node.store.mark_read(dev.user, ev.conv, ev.upto, now_ms()),
            f"read of {ev.conv} by {dev.user}")
        analytics.read(dev.user, ev.conv, ev.upto)


async def ping(node: Node, dev: Device, ev: F.Ping) -> None:
    dev.send_frame(F.Pong(nonce=ev.nonce))


async def pong(node: Node, dev: Device, ev: F.Pong) -> None:
    pass


async def sync(node: Node, dev: Device, ev: F.Sync) -> None:
    dev.resync(await node.store.cursor(dev.user, dev.device))


async def history(node: Node, dev: Device, ev: F.History) -> None:
    if not await may_access(node, dev, ev.conv, ev.rid):
        return
    after = 0  # a group member pages back to when they joined, not before
    group = convs.group_of(ev.conv)
    if group is not None:
        after = await node.store.joined_at(group, dev.user) or 0
    items = await node.store.history(ev.conv, ev.before, ev.limit + 1, after)
    more = len(items) > ev.limit
    page: list[F.HistoryItem] = []
    size = 0
    budget = min(HISTORY_BUDGET, node.config.max_outbound // 4)  # (see Device.backed_up)
    for item in items[: ev.limit]:
        size += len(item.body) + sum(len(m.preview) for m in item.media) + 200
        if page and size > budget:
            more = True
            break
        page.append(item)
    dev.send_frame(F.HistoryPage(rid=ev.rid, conv=ev.conv, items=tuple(page), more=more))


def _send_group(dev: Device, rid: int, info: GroupInfo) -> None:
    dev.send_frame(F.Group(rid=rid, group=info.group, name=info.name, members=info.members,
                           admins=info.admins, mode=info.mode, ttl=info.ttl))


async def _unknown_users(node: Node, dev: Device, users: tuple[str, ...], rid: int) -> bool:
    unknown = [u for u in users if not await node.user_exists(u)]
    if unknown:
        dev.error(ErrorCode.UNKNOWN_TARGET, f"no user {', '.join(unknown)}", rid=rid)
    return bool(unknown)


async def group_list(node: Node, dev: Device, ev: F.GroupList) -> None:
    dev.send_frame(F.Groups(rid=ev.rid, groups=tuple(await node.store.user_groups(dev.user))))


async def group_create(node: Node, dev: Device, ev: F.GroupCreate) -> None:
    if await _unknown_users(node, dev, ev.members, ev.rid):
        return
    problem = group_rules.may_create(dev.user, ev.members, node.config.group_max_members)
    if problem is not None:
        refuse(dev, problem, rid=ev.rid)
        return
    info = None
    while info is None:  # a fresh random id (a clash is astronomically rare)
        info = await node.store.create_group(secrets.token_hex(6), ev.name, dev.user,
                                             list(ev.members), now_ms())
    analytics.group_changed(dev.user, info.group, "create", len(info.members))
    _send_group(dev, ev.rid, info)


async def group_info(node: Node, dev: Device, ev: F.GroupInfo) -> None:
    info = await group_for(node, dev, ev.group, rid=ev.rid)
    if info is not None:
        _send_group(dev, ev.rid, info)


async def group_leave(node: Node, dev: Device, ev: F.GroupLeave) -> None:
    info = await group_for(node, dev, ev.group, rid=ev.rid)
    if info is not None:
        await node.store.change_group(info.group, dev.user, now_ms(), remove=(dev.user,))
        analytics.group_changed(dev.user, info.group, "leave", 1)
        dev.send_frame(F.Ok(rid=ev.rid))


async def _change(node: Node, dev: Device, group: str, rid: int,
                  check: Callable[[GroupInfo], Refusal | None], action: str, count: int,
                  **change: Any) -> None:
    """A membership or name change, if the device's user is a member and `check` allows it:
    answered with the group as it is now."""
    info = await group_for(node, dev, group, rid=rid)
    if info is None:
        return
    problem = check(info)
    if problem is not None:
        refuse(dev, problem, rid=rid)
        return
    _send_group(dev, rid, await node.store.change_group(info.group, dev.user, now_ms(),
                                                       **change))
    analytics.group_changed(dev.user, info.group, action, count)


async def group_add(node: Node, dev: Device, ev: F.GroupAdd) -> None:
    if await _unknown_users(node, dev, ev.users, ev.rid):
        return
    limit = node.config.group_max_members
    await _change(node, dev, ev.group, ev.rid,
                  lambda info: group_rules.may_add(info, dev.user, ev.users, limit),
                  "add", len(ev.users), add=ev.users)


async def group_remove(node: Node, dev: Device, ev: F.GroupRemove) -> None:
    await _change(node, dev, ev.group, ev.rid,
                  lambda info: group_rules.may_remove(info, dev.user, ev.users),
                  "remove", len(ev.users), remove=ev.users)


async def group_rename(node: Node, dev: Device, ev: F.GroupRename) -> None:
    await _change(node, dev, ev.group, ev.rid, lambda info: group_rules.may_rename(info, dev.user),
                  "rename", 0, name=ev.name)


async def set_mode(node: Node, dev: Device, ev: F.SetMode) -> None:
    group = convs.group_of(ev.conv)
    if group is not None:
        info = await group_for(node, dev, group, rid=ev.rid)
        if info is None:
            return
        problem = group_rules.may_set_mode(info, dev.user)
        if problem is not None:
            refuse(dev, problem, rid=ev.rid)
            return
    elif not await may_access(node, dev, ev.conv, ev.rid):  # canonical, both users exist
        return
    problem = modes.problem(ev.mode, ev.ttl)
    if problem is not None:
        refuse(dev, problem, rid=ev.rid)
        return
    await node.store.set_mode(ev.conv, ev.mode, ev.ttl, dev.user, now_ms())
    dev.send_frame(F.Ok(rid=ev.rid))


async def receipt_query(node: Node, dev: Device, ev: F.ReceiptQuery) -> None:
    if await may_access(node, dev, ev.conv, ev.rid):
        st = await node.store.receipt_state(ev.conv, ev.seq)
        dev.send_frame(F.ReceiptState(rid=ev.rid, conv=ev.conv, seq=ev.seq,
                                      delivered=st.delivered, read=st.read,
                                      pending=st.pending))


async def presence_subscribe(node: Node, dev: Device, ev: F.PresenceSubscribe) -> None:
    new = [u for u in dict.fromkeys(ev.users) if u not in (dev.watching or ())]
    limit = node.config.max_watch
    if len(dev.watching or ()) + len(new) > limit:
        dev.error(ErrorCode.INVALID, f"a device watches at most {limit} users")
        return
    unknown = [u for u in new if not await node.user_exists(u)]
    if unknown:
        dev.error(ErrorCode.UNKNOWN_TARGET, f"no user {', '.join(unknown[:8])}")
        return
    for user in ev.users:
        node.presence.watch(dev, user)
        dev.send_presence(await node.presence.state(user, dev.user))


async def presence_unsubscribe(node: Node, dev: Device, ev: F.PresenceUnsubscribe) -> None:
    for user in ev.users:
        node.presence.unwatch(dev, user)


async def last_seen_query(node: Node, dev: Device, ev: F.LastSeenQuery) -> None:
    if await node.user_exists(ev.user):
        dev.send_frame(await node.presence.state(ev.user, dev.user, ev.rid))
    else:
        dev.error(ErrorCode.UNKNOWN_TARGET, f"no user {ev.user!r}", rid=ev.rid)


async def set_privacy(node: Node, dev: Device, ev: F.SetPrivacy) -> None:
    await node.presence.set_hidden(dev.user, ev.last_seen == "nobody")
    dev.send_frame(F.Ok(rid=ev.rid))


async def upload_slot(node: Node, dev: Device, ev: F.UploadSlot) -> None:
    from chatd.media.blobs import BlobStoreError
    from chatd.media.service import MediaError

    media = node.media
    if media is None:
        dev.error(ErrorCode.INVALID, "this server takes no uploads (no http_port)", rid=ev.rid)
        return
    try:
        dev.send_frame(await media.slot(dev.user, ev, f"{node.media_url}/v1/upload"))
        analytics.upload(dev.user, ev.size, ev.mime)
    except MediaError as exc:
        dev.error(ErrorCode.TOO_LARGE if exc.status == 413 else ErrorCode.INVALID, exc.message,
                  rid=ev.rid)
    except BlobStoreError as exc:
        dev.error(ErrorCode.INTERNAL, f"media store unavailable: {exc}", rid=ev.rid,
                  retry_ms=1000)


HANDLERS: Final[dict[type[Frame], Handler]] = {
    F.Read: read,
    F.Ping: ping,
    F.Pong: pong,
    F.Sync: sync,
    F.History: history,
    F.GroupCreate: group_create,
    F.GroupAdd: group_add,
    F.GroupRemove: group_remove,
    F.GroupLeave: group_leave,
    F.GroupRename: group_rename,
    F.GroupInfo: group_info,
    F.GroupList: group_list,
    F.PresenceSubscribe: presence_subscribe,
    F.PresenceUnsubscribe: presence_unsubscribe,
    F.LastSeenQuery: last_seen_query,
    F.SetPrivacy: set_privacy,
    F.SetMode: set_mode,
    F.UploadSlot: upload_slot,
    F.ReceiptQuery: receipt_query,
}


async def handle(node: Node, dev: Device, ev: Frame) -> None:
    """One request other than Send, Ack and Goodbye (the session handles those)."""
    if type(ev) is not F.Pong and refused(node, dev, ev):
        return
    handler = HANDLERS.get(type(ev))
    if handler is None:
        dev.error(ErrorCode.INVALID, f"this server does not handle {type(ev).__name__}",
                  rid=getattr(ev, "rid", None))
        return
    await handler(node, dev, ev)
