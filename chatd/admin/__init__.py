"""`chatd admin`: a user's devices, revoking their tokens, deleting a user.

Layers: `revocations` is sans-IO (when a token is void; what a node's poll ends), `ops` runs
the admin actions against a Store, `command` is the CLI. Nodes learn of revocations by polling
the store (`RevocationWatch`, started by ChatServer.run), so a revocation reaches every node
and worker, with or without Redis, within `revocation_poll` seconds.
"""

from .ops import DeviceInfo, delete_user, list_devices, revoke
from .revocations import RevocationWatch, is_void

__all__ = ["DeviceInfo", "RevocationWatch", "delete_user", "is_void", "list_devices", "revoke"]
