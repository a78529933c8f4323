"""Server settings: defaults < TOML config file < CHATD_* environment variables < flags."""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from typing import Any


class ConfigError(ValueError):
    pass


@dataclasses.dataclass
class Config:
    host: str = "127.0.0.1"
    tcp_port: int = 7777
    ws_port: int = 7778  # 0 picks a free port; -1 disables the listener
    data_dir: str = "./chatd-data"
    store: str = ""  # default: sqlite:///<data_dir>/chatd.db
    tls_cert: str = ""
    tls_key: str = ""
    heartbeat: float = 30.0  # seconds between client pings, announced in Welcome
    idle_timeout: float = 75.0  # no bytes for this long: the connection is dead
    auth_timeout: float = 10.0  # Hello must be complete within this
    frame_timeout: float = 30.0  # a started frame must be complete within this
    shutdown_grace: float = 5.0
    max_queue: int = 2048  # outbound frames per connection before slow-consumer disconnect
    max_outbound: int = 4 * 1024 * 1024  # outbound bytes per connection, answers included
    max_unauthenticated: int = 1024  # connections still before Welcome, per process
    max_unauthenticated_per_address: int = 64  # the same, from one client address
    send_rate: float = 20.0  # messages a second per user, all devices (token bucket)
    send_burst: float = 100.0
    request_rate: float = 50.0  # other requests a second per user (reads, history, groups...)
    request_burst: float = 200.0
    group_create_rate: float = 0.2  # new groups a second per user
    group_create_burst: float = 20.0
    max_watch: int = 2048  # users one device may watch the presence of
    group_max_members: int = 1024
    presence_threshold: float = 30.0  # online while active within this many seconds
    gc_interval: float = 30.0  # seconds between deletions of what chat modes say to forget
    temporary_max_age: float = 30 * 86400.0  # undelivered temporary messages are dropped then
    metrics_port: int = -1  # Prometheus /metrics on this port; -1: off, 0: any free port
    node_id: str = ""  # this node's name among several (with redis); default: the host name
    redis: str = ""  # redis://host:port or redis+cluster://host:port,...: join a cluster
    workers: int = 0  # processes of `chatd serve` sharing the ports; 0: the store's best
    http_port: int = -1  # image uploads and downloads over HTTP(S); -1: off, 0: any free port
    media: str = ""  # blob store: file:///path or s3://bucket?endpoint=...; "": <data_dir>/media
    media_url: str = ""  # the HTTP base URL clients use; default http(s)://host:http_port
    max_upload: int = 16 * 1024 * 1024  # bytes of one uploaded image
    media_link_ttl: float = 3600.0  # seconds a signed image link (for a CDN) stays valid
    ws_origins: str = ""  # browser Origins the WebSocket takes ("*": any); "": the node's own
    revocation_poll: float = 1.0  # seconds between reads of new token revocations (chatd admin)
    analytics: str = ""  # redis://host:port: publish user-action events to a stream; "": off
    analytics_stream: str = "chatd:analytics"  # the Redis Stream's key
    analytics_maxlen: int = 1_000_000  # events the stream keeps (XADD MAXLEN ~)
    analytics_content: bool = False  # also the words of text messages (never with E2E bodies)

    @property
    def store_url(self) -> str:
        return self.store or f"sqlite://{os.path.abspath(self.data_dir)}/chatd.db"

    def update(self, values: dict[str, Any], source: str) -> None:
        fields = {f.name: f for f in dataclasses.fields(self)}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in fields:
                raise ConfigError(f"{source}: unknown setting {key!r}")
            kind = type(getattr(Config(), name))
            if kind is bool and isinstance(value, str):  # (environment, flags)
                value = {"true": True, "1": True, "false": False, "0": False}.get(
                    value.lower(), value)
                if isinstance(value, str):
                    raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
            try:
                setattr(self, name, kind(value))
            except (TypeError, ValueError):
                raise ConfigError(
                    f"{source}: {key} must be {kind.__name__}, got {value!r}") from None
        if (self.tls_cert and not self.tls_key) or (self.tls_key and not self.tls_cert):
            raise ConfigError("tls_cert and tls_key go together")

    def validate(self) -> Config:
        """Check the settings as a whole and fill in the defaults that depend on others (the
        one place: `chatd serve`, `chatd token` and every worker call it); ConfigError says
        what is wrong. Returns self."""
        from chatd.store import BadStoreURL, check_store_url

        if (self.tls_cert and not self.tls_key) or (self.tls_key and not self.tls_cert):
            raise ConfigError("tls_cert and tls_key go together")
        try:
            check_store_url(self.store_url)
        except BadStoreURL as exc:
            raise ConfigError(str(exc)) from None
        if self.redis and not self.redis.startswith(("redis://", "redis+cluster://")):
            raise ConfigError(f"--redis {self.redis!r}: expected redis://host:port or"
                              " redis+cluster://host:port[,host:port...]")
        if self.redis and not self.node_id:
            self.node_id = socket.gethostname()  # a node's name among several
        if self.analytics and not self.analytics.startswith("redis://"):
            raise ConfigError(f"analytics {self.analytics!r}: expected redis://host:port")
        if self.revocation_poll <= 0:
            raise ConfigError("revocation_poll must be more than 0 seconds")
        return self

    @property
    def processes(self) -> int:
        """How many processes `chatd serve` runs; ConfigError if the store cannot be shared by
        that many. workers 0: one on SQLite (its writers take turns on one write lock, so a
        second process adds contention, not capacity: docs/BENCHMARKS.md), one per core on a
        store that runs elsewhere (Cassandra)."""
        n = self.workers or (1 if self.store_url.startswith(("sqlite:", "memory:"))
                             else os.cpu_count() or 1)
        if n > 1 and self.store_url == "memory://":
            raise ConfigError("memory:// lives in one process: use --workers 1 with it")
        return n


def load_config(path: str | None, flags: dict[str, Any], environ: dict[str, str]) -> Config:
    cfg = Config()
    path = path or environ.get("CHATD_CONFIG")
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        cfg.update(data.get("server", data), path)
    names = {f.name for f in dataclasses.fields(Config)}
    cfg.update({k[6:].lower(): v for k, v in environ.items()
                if k.startswith("CHATD_") and k[6:].lower() in names}, "environment")
    cfg.update({k: v for k, v in flags.items() if v is not None}, "command line")
    return cfg
