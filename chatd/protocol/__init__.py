"""chatd wire protocol v1, sans-IO. See docs/PROTOCOL.md. Never imports trio."""

from .codec import decode_body, encode_body
from .connection import NEED_DATA, PEER_CLOSED, Connection, Framing, Role, Signal, State
from .errors import Action, ErrorCode, LocalProtocolError, ProtocolError
from .frames import *  # noqa: F403
from .frames import FRAME_TYPES, Frame, Mode, Origin, Status
from .limits import MAX_BODY_SIZE, MAX_FRAME_SIZE, PROTOCOL_VERSION

__all__ = [
    "NEED_DATA", "PEER_CLOSED", "Connection", "Framing", "Role", "Signal", "State",
    "Action", "ErrorCode", "LocalProtocolError", "ProtocolError", "FRAME_TYPES", "Frame",
    "Mode", "Origin", "Status", "MAX_BODY_SIZE", "MAX_FRAME_SIZE", "PROTOCOL_VERSION",
    "decode_body", "encode_body",
]
