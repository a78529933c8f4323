"""Signed, expiring tokens: HMAC-SHA256 over (user, device, expiry, issue time) with the node's
secret.

A token is `<payload>.<signature>`, both base64url without padding; the payload is the msgpack
array [1, user, device or nil, expiry in unix seconds, issue time in unix ms]. A token without a
device lets the client name its device in Hello. The issue time lets `chatd admin revoke` void
the tokens issued up to a moment (chatd.admin). Tokens made before revocation existed have
four fields ([1, user, device, expiry]) and still verify, as issued at time 0: any revocation
of their user or device voids them. (The version stays 1: the web app reads the user from it.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time

import msgpack

from chatd.protocol.errors import ProtocolError
from chatd.protocol.frames import DEVICE, USER

SECRET_FILE = "secret"


class AuthError(Exception):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_or_create_secret(data_dir: str) -> bytes:
    """The node's signing secret, made on first use (mode 0600) in the data dir, which is
    made private to the node's user (0700) whatever the umask."""
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    os.chmod(data_dir, 0o700)
    path = os.path.join(data_dir, SECRET_FILE)
    try:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
        with open(path, "rb") as f:
            return bytes.fromhex(f.read().decode().strip())
    except FileNotFoundError:
        pass
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex() + "\n")
    return secret


def make_token(secret: bytes, user: str, device: str | None = None,
               ttl: float = 30 * 86400, now: float | None = None) -> str:
    USER.check(user, "user")
    if device is not None:
        DEVICE.check(device, "device")
    t = time.time() if now is None else now
    payload = msgpack.packb([1, user, device, int(t + ttl), int(t * 1000)])
    sig = hmac.new(secret, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(sig)}"


def verify_token(secret: bytes, token: str, now: float | None = None) -> tuple[str, str | None]:
    """(user, device or None) for a valid token; AuthError saying why otherwise."""
    user, device, _ = read_token(secret, token, now)
    return user, device


def read_token(secret: bytes, token: str, now: float | None = None
               ) -> tuple[str, str | None, int]:
    """(user, device or None, issue time in ms; 0 for a four-field token) for a valid token;
    AuthError saying why otherwise."""
    try:
        p64, s64 = token.split(".")
        payload, sig = _unb64(p64), _unb64(s64)
    except ValueError:
        raise AuthError("token is not in the form payload.signature") from None
    if not hmac.compare_digest(sig, hmac.new(secret, payload, hashlib.sha256).digest()):
        raise AuthError("bad token signature")
    try:
        fields = msgpack.unpackb(payload)
        version, user, device, exp = fields[:4]
        issued = fields[4] if len(fields) == 5 else 0
        USER.check(user, "user")
        if device is not None:
            DEVICE.check(device, "device")
    except (ValueError, TypeError, ProtocolError):
        raise AuthError("token payload is malformed") from None
    if version != 1 or len(fields) not in (4, 5) or type(exp) is not int \
            or type(issued) is not int:
        raise AuthError("token payload is malformed")
    if exp < (time.time() if now is None else now):
        raise AuthError("token expired")
    return user, device, issued
