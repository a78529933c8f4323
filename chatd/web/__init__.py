"""chatd's browser app: the built bundle (clients/web/dist) served by the node's HTTP
listener, and the Origin check of the WebSocket endpoint."""

from .app import WebApp, find_bundle, sign_in_link, with_web
from .origins import origin_allowed, parse_origins, request_origin

__all__ = ["WebApp", "find_bundle", "origin_allowed", "parse_origins", "request_origin",
           "sign_in_link",
           "with_web"]
