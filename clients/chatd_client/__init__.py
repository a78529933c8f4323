"""chatd Python SDK: `async with chatd_client.connect(url, token=...) as c:`."""

from chatd.protocol.frames import Mode

from .client import ChatdError, Client, ConnectionLost, connect
from .events import (
    Connected,
    Delivered,
    Disconnected,
    Event,
    Message,
    Presence,
    Read,
    SentAck,
    ServerError,
    Synced,
    presence_text,
)
from .media import MediaError

__all__ = ["ChatdError", "Client", "Connected", "ConnectionLost", "Delivered", "Disconnected",
           "Event", "MediaError", "Message", "Mode", "Presence", "Read", "SentAck",
           "ServerError", "Synced", "connect", "presence_text"]
