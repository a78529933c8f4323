"""The admin primitives of the Store contract (devices, revocations, deleting a user), on every
backend, and the SQLite migration that adds them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from chatd.admin import delete_user
from chatd.core import Delivery, now_ms
from chatd.store import NewMessage, Store, direct_conv, open_store
from chatd.store.base import Revocation
from chatd.store.sqlite import MIGRATIONS, SCHEMA, SCHEMA_VERSION


def msg(cid: str, sender: str, to: str) -> NewMessage:
    return NewMessage(sender=sender, device="phone", client_id=cid, conv=direct_conv(sender, to),
                      recipients=(to,), body=cid.encode(), ts=1000)


async def test_devices_lists_each_device_with_its_cursor(store: Store) -> None:
    assert await store.devices("nobody") == {}
    await store.attach_device("bob", "phone")
    await store.attach_device("alice", "phone")
    await store.append_message(msg("1", "alice", "bob"))
    await store.append_message(msg("2", "alice", "bob"))
    await store.ack("bob", "phone", 1, ts=5)
    await store.attach_device("bob", "laptop")  # starts at the lowest cursor
    assert await store.devices("bob") == {"phone": 1, "laptop": 1}


async def test_revocation_applies_to_its_device_or_to_all_and_only_rises(store: Store) -> None:
    await store.attach_device("bob", "phone")
    assert await store.revoked_at("bob", "phone") == 0
    await store.revoke("bob", "phone", 5000)
    assert await store.revoked_at("bob", "phone") == 5000
    assert await store.revoked_at("bob", "laptop") == 0  # another device: untouched
    assert await store.revoked_at("carol", "phone") == 0  # another user: untouched
    await store.revoke("bob", "phone", 4000)  # an older time changes nothing
    assert await store.revoked_at("bob", "phone") == 5000
    await store.revoke("bob", None, 7000)  # every device
    assert await store.revoked_at("bob", "phone") == 7000
    assert await store.revoked_at("bob", "laptop") == 7000
    await store.revoke("bob", "phone", 9000)
    assert (await store.revoked_at("bob", "phone"), await store.revoked_at("bob", "tv")) == (
        9000, 7000)


async def test_recent_revocations_are_listed_for_the_nodes_poll(store: Store) -> None:
    now = now_ms()
    await store.revoke("old", None, now - 3_600_000)
    await store.revoke("bob", "phone", now - 1000)
    await store.revoke("carol", None, now)
    got = await store.revocations_since(now - 60_000)
    assert sorted(got, key=lambda r: r.user) == [Revocation("bob", "phone", now - 1000),
                                                 Revocation("carol", None, now)]
    assert Revocation("old", None, now - 3_600_000) in await store.revocations_since(0)


async def test_deleting_a_user_forgets_their_data_but_not_what_they_sent(store: Store) -> None:
    for user in ("alice", "bob"):
        await store.attach_device(user, "phone")
    await store.append_message(msg("hello", "alice", "bob"))
    await store.append_message(msg("hi", "bob", "alice"))
    await store.set_last_seen({"bob": 123})
    await store.set_privacy("bob", True)
    await store.revoke("bob", None, 50)
    await store.delete_user("bob")
    assert not await store.has_user("bob")
    assert await store.devices("bob") == {}
    assert await store.presence_of("bob") == (None, False)
    assert (await store.inbox("bob", "phone", 0, 100)).items == []
    assert await store.revoked_at("bob", "phone") == 50  # old tokens stay void
    # what bob sent stays in the chat, and alice still has it
    history = await store.history(direct_conv("alice", "bob"), None, 10)
    assert [(h.sender, h.id) for h in history] == [("bob", "hi"), ("alice", "hello")]
    page = await store.inbox("alice", "phone", 0, 100)
    assert [i.id for i in page.items if isinstance(i, Delivery)] == ["hi"]
    # the name can be used again, from scratch
    assert await store.attach_device("bob", "phone") == 0
    assert (await store.inbox("bob", "phone", 0, 100)).items == []


async def test_receipts_for_a_deleted_users_messages_do_not_bring_them_back(
        store: Store) -> None:
    """alice acks and reads what bob sent before he was deleted: the DELIVERED and READ
    receipts have nobody to go to, and must not make "bob" exist again (the server would
    then take messages for a user nobody can sign in as)."""
    for user in ("alice", "bob"):
        await store.attach_device(user, "phone")
    await store.append_message(msg("hi", "bob", "alice"))
    await store.delete_user("bob")
    await store.ack("alice", "phone", 1, ts=5)
    await store.mark_read("alice", direct_conv("alice", "bob"), 1, ts=6)
    assert not await store.has_user("bob")
    assert await store.devices("bob") == {}


async def test_delete_user_leaves_their_groups_as_a_normal_change(store: Store) -> None:
    for user in ("alice", "bob", "carol"):
        await store.attach_device(user, "phone")
    await store.create_group("fam", "Family", "bob", ["alice", "carol"], ts=1)
    assert await delete_user(store, "bob", settle=0) == ["fam"]
    info = await store.group("fam")
    assert info is not None and info.members == ("alice", "carol")
    assert len(info.admins) == 1  # someone took over as admin
    history = await store.history("g:fam", None, 10)
    assert history[0].event is not None and "bob" in str(history[0].event)
    assert await store.user_groups("bob") == []


async def test_sqlite_migration_adds_revocations_to_an_existing_database(tmp_path: Path
                                                                         ) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    for v in range(1, 5):
        db.executescript(MIGRATIONS[v])
    db.execute("INSERT INTO meta VALUES ('schema_version', '5')")
    db.execute("INSERT INTO users (user) VALUES ('bob')")
    db.commit()
    db.close()
    async with open_store(f"sqlite://{path}") as store:
        assert await store.has_user("bob")
        await store.revoke("bob", "phone", 10)
        assert await store.revoked_at("bob", "phone") == 10
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta").fetchone() == (str(SCHEMA_VERSION),)
    db.close()
