"""`--store cassandra://...`: what the URL may say, and a clear error for what it may not."""

from __future__ import annotations

import pytest

from chatd.store import BadStoreURL, check_store_url
from chatd.store.cql import CassandraURL, redact


def test_hosts_keyspace_and_options() -> None:
    u = CassandraURL.parse("cassandra://bob:s%40cret@h1:9043,h2/Chat_1?replication=dc1:3,dc2:2"
                           "&consistency=quorum&serial=SERIAL&dc=dc1&timeout=2.5")
    assert u.hosts == (("h1", 9043), ("h2", 9042)) and u.keyspace == "chat_1"
    assert (u.consistency, u.serial, u.dc, u.timeout) == ("QUORUM", "SERIAL", "dc1", 2.5)
    assert (u.user, u.password) == ("bob", "s@cret") and "s@cret" not in repr(u)
    assert u.replication_cql() == ("{'class': 'NetworkTopologyStrategy', 'dc1': 3,"
                                   " 'dc2': 2}")
    d = CassandraURL.parse("cassandra://127.0.0.1/chatd")
    assert (d.consistency, d.serial, d.timeout) == ("LOCAL_QUORUM", "LOCAL_SERIAL", 5.0)
    assert d.replication_cql() == "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    assert (d.numbering, d.lease) == ("paxos", 30.0)
    o = CassandraURL.parse("cassandra://h/ks?numbering=owner&lease=9&timeout=2")
    assert (o.numbering, o.lease) == ("owner", 9.0)


@pytest.mark.parametrize(("url", "says"), [
    ("cassandra://h1/", "keyspace"),
    ("cassandra://h1/k-s", "keyspace"),
    ("cassandra:///ks", "expected cassandra://host"),
    ("cassandra://h1:99999/ks", "bad host"),
    ("cassandra://h1/ks?consistency=MANY", "consistency is one of"),
    ("cassandra://h1/ks?serial=QUORUM", "serial is SERIAL or LOCAL_SERIAL"),
    ("cassandra://h1/ks?timeout=x", "timeout is seconds"),
    ("cassandra://h1/ks?replication=0", "replication is N"),
    ("cassandra://h1/ks?replication=dc1:x", "replication is N"),
    ("cassandra://h1/ks?colour=blue", "unknown option 'colour'"),
    ("cassandra://h1/ks?numbering=clock", "numbering is paxos or owner"),
    ("cassandra://h1/ks?lease=0", "lease is seconds"),
    ("cassandra://h1/ks?numbering=owner&lease=14", "lease must be over twice timeout + 2 s"),
    ("cassandra://u:hunter2@h1/ks?colour=blue", "***"),
])
def test_bad_urls_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(BadStoreURL) as err:
        check_store_url(url)
    assert says in str(err.value) and "hunter2" not in str(err.value)


def test_passwords_never_printed() -> None:
    assert redact("cassandra://u:hunter2@h1,h2/ks") == "cassandra://u:***@h1,h2/ks"
    assert redact("cassandra://h1/ks") == "cassandra://h1/ks"
