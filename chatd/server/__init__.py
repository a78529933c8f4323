"""The only socket code of chatd: TCP and WebSocket listeners and per-connection sessions."""

from .app import ChatServer, serve
from .config import Config, ConfigError, load_config

__all__ = ["ChatServer", "Config", "ConfigError", "load_config", "serve"]
