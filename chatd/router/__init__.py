"""Who is where, and telling them. `LocalRouter` (local.py) maps users to the sessions of this
process and offers them committed inbox items. The other processes serving the same users are
*peers*: the workers of one node over Unix datagrams (`UnixPeers`, peers.py), and other nodes
through Redis (`RedisPeers`, redis.py: a session registry, per-node streams, and the group
fan-out jobs' stream). Peers only say when to look; the store is the truth."""

from .local import LocalRouter, Target

__all__ = ["LocalRouter", "Target"]
