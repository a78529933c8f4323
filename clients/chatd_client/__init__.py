"""chatd Python SDK: `async with chatd_client.connect(url, token=...) as c:`."""

from .client import ChatdError, Client, ConnectionLost, connect
from .events import (
    Connected,
    Delivered,
    Disconnected,
    Event,
    Message,
    Read,
    SentAck,
    ServerError,
    Synced,
)

__all__ = ["ChatdError", "Client", "Connected", "ConnectionLost", "Delivered", "Disconnected",
           "Event", "Message", "Read", "SentAck", "ServerError", "Synced", "connect"]
