"""The node: listeners (TCP, WebSocket, and the HTTP listener of chatd.media and chatd.web),
one Session per connected device (session.py: the connection pump), the request handlers
(handlers.py: one function per frame type, over the chat rules of chatd.core), presence,
limits, metrics, and the worker processes of `chatd serve --workers N`."""

from .app import ChatServer, serve
from .config import Config, ConfigError, load_config

__all__ = ["ChatServer", "Config", "ConfigError", "load_config", "serve"]
