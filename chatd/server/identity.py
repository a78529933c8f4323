"""A node's name in the store, the same across its restarts (docs/CASSANDRA.md, "A node that
restarts").

With `numbering=owner` a node holds shard leases under this name. A node (or a worker) that
was killed and started again under the same name takes its leases back at once (once the
lease margin has passed since it started), instead of waiting up to `lease` seconds for them
to run out. That is safe only if the previous process under that name is dead: the name is
held with an exclusive lock on a file in the data dir (the kernel lets go of it when the
process dies, however it dies), and it carries a random token kept in the data dir, so two
nodes on two machines that happen to share a host name and a path are still two names. If the
lock is held (another live process with this name and data dir), the node runs under a
random name, as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
from collections.abc import Iterator

log = logging.getLogger("chatd.identity")

TOKEN_FILE = "node-token"


def _token(data_dir: str) -> str:
    path = os.path.join(data_dir, TOKEN_FILE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path) as f:
            if token := f.read().strip():
                return token
        raise RuntimeError(f"{path} is empty: remove it, a new one is made") from None
    token = secrets.token_hex(4)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


@contextlib.contextmanager
def store_name(data_dir: str, node: str) -> Iterator[str | None]:
    """`node@token` while this process holds the name's lock (None if another process does),
    for as long as the block runs."""
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    token = _token(data_dir)
    path = os.path.join(data_dir, f"node-{re.sub(r'[^A-Za-z0-9_.-]', '_', node)}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("%s is held by another running chatd: this one runs under a random"
                        " name (its shard leases are not taken back after a restart)", path)
            yield None
            return
        yield f"{node}@{token}"
    finally:
        os.close(fd)
