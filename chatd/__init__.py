"""chatd: a self-hostable WhatsApp-style messaging server on trio."""

from __future__ import annotations

import importlib.util
from typing import Any, Final

__version__ = "0.2.0"  # also clients/pyproject.toml and the chatd-client pin in pyproject.toml

# feature: what it is for the operator, its extra (pip install 'chatd[extra]'), and the
# modules it imports with the packages that provide them
EXTRAS: Final = {
    "cassandra": ("the Cassandra store", {"cassandra": "cassandra-driver"}),
    "redis": ("joining other nodes (--redis)", {"coredis": "coredis"}),
    "media": ("the HTTP listener for images (--http-port)",
              {"PIL": "pillow", "hypercorn": "hypercorn"}),
    "s3": ("the S3 media store", {"boto3": "boto3"}),
}


class MissingExtra(RuntimeError):
    """A feature needs an optional dependency that is not installed."""


def need(extra: str) -> None:
    """Raise MissingExtra, one line naming the install command, unless what the extra
    installs can be imported."""
    what, modules = EXTRAS[extra]
    for module, package in modules.items():
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(f"{what} needs {package}: pip install 'chatd[{extra}]'")


def check_extras(cfg: Any) -> None:
    """Before a node starts (and forks workers): every extra its settings (a
    chatd.server.Config) need is installed."""
    if cfg.store_url.startswith("cassandra:"):
        need("cassandra")
    if cfg.redis:
        need("redis")
    if cfg.http_port >= 0:
        need("media")
        if cfg.media.startswith("s3:"):
            need("s3")


def version_line() -> str:
    """`chatd --version`: this package's, the SDK's and the wire protocol's versions."""
    from importlib.metadata import PackageNotFoundError, version

    from chatd.protocol import PROTOCOL_VERSION

    try:
        client = version("chatd-client")
    except PackageNotFoundError:
        client = "not installed"
    return f"chatd {__version__} (chatd-client {client}, protocol {PROTOCOL_VERSION})"
