"""The `chatd` command: serve, token, send, listen, chat."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import trio

from chatd import MissingExtra, check_extras, version_line
from chatd.admin.command import add_admin
from chatd.analytics.command import add_analytics
from chatd.auth import load_or_create_secret, make_token
from chatd.server import ConfigError, load_config, serve
from chatd.server.workers import WorkerFailed
from chatd.store import BadStoreURL, StoreError, check_store_url, open_store
from chatd.util import need_token, redact, single_errors

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    unit = DURATION_UNITS.get(text[-1:])
    try:
        return float(text[:-1]) * unit if unit else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected seconds or 30s/15m/12h/30d") from None


def server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file with the settings (a [server] table)")
    p.add_argument("--data-dir", help="where the SQLite store and the token secret live"
                   " (default ./chatd-data)")
    p.add_argument("--store", help="memory://, sqlite:///path/to/file.db, or"
                   " cassandra://host[:port][,host...]/keyspace[?replication=3&"
                   "consistency=LOCAL_QUORUM&serial=LOCAL_SERIAL&dc=NAME&timeout=5]")


def add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="run a chatd node")
    server_options(p)
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--tcp-port", type=int, help="TCP port (default 7777)")
    p.add_argument("--ws-port", type=int, help="WebSocket port, path /ws (default 7778;"
                   " -1 disables)")
    p.add_argument("--tls-cert", help="PEM certificate: serve TLS on TCP and wss")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    p.add_argument("--heartbeat", type=duration, help="seconds between client pings")
    p.add_argument("--idle-timeout", type=duration, help="drop connections silent this long")
    p.add_argument("--send-rate", type=float, help="messages per second per connection")
    p.add_argument("--send-burst", type=float, help="burst allowance for --send-rate")
    p.add_argument("--max-queue", type=int, help="outbound frames before slow-consumer close")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on"
                   " http://HOST:PORT/metrics (default off)")
    p.add_argument("--node-id", help="this node's name in a cluster (default: host name)")
    p.add_argument("--redis", help="join a cluster: redis://host:port, or"
                   " redis+cluster://host:port[,host:port...] for Redis Cluster")
    p.add_argument("--workers", type=int, help="worker processes sharing the ports"
                   " (default: 1 on SQLite, one per core on Cassandra; 1 runs everything in"
                   " this process)")
    p.add_argument("--http-port", type=int, help="HTTP(S) port for image uploads and"
                   " downloads (default -1: off; 0: any free port)")
    p.add_argument("--media", help="where images are kept: file:///path (default"
                   " <data-dir>/media) or s3://bucket?endpoint=http://host:port")
    p.add_argument("--media-url", help="the HTTP base URL clients reach --http-port at"
                   " (default http(s)://HOST:PORT)")
    p.add_argument("-v", "--verbose", action="store_true")


def client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("CHATD_URL", "tcp://127.0.0.1:7777"),
                   help="tcp://, tls://, ws://host:port/ws or wss:// (env CHATD_URL);"
                   " repeat with commas to fail over")
    p.add_argument("--token", default=os.environ.get("CHATD_TOKEN"),
                   help="token from `chatd token` (env CHATD_TOKEN)")
    p.add_argument("--device", default="default", help="this device's name")
    p.add_argument("--ca-file", help="CA certificate for tls:// and wss://")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatd", description="chatd messaging server")
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve(sub)
    p = sub.add_parser("migrate", help="create or upgrade the store's schema (Cassandra:"
                       " needed before serve; SQLite: done on start anyway)")
    server_options(p)
    p = sub.add_parser("token", help="register a user and print a signed token")
    server_options(p)
    p.add_argument("user")
    p.add_argument("--device", help="bind the token to one device name")
    p.add_argument("--ttl", type=duration, default=30 * 86400.0,
                   help="lifetime (default 30d)")
    add_admin(sub, server_options)
    add_analytics(sub)
    p = sub.add_parser("send", help="send one message; prints the SENT ack as JSON")
    client_options(p)
    p.add_argument("--to", required=True, help="recipient user")
    p.add_argument("--id", help="client message id (retrying with the same id is safe)")
    p.add_argument("--image", help="an image file to send (TEXT is its caption)")
    p.add_argument("text", nargs="?", default="")
    p = sub.add_parser("listen", help="print incoming events as JSON lines")
    client_options(p)
    p.add_argument("--count", type=int, help="exit after this many messages")
    p.add_argument("--read", action="store_true", help="mark messages read as they arrive")
    p.add_argument("--timeout", type=duration, help="exit after this long")
    p.add_argument("--save-media", metavar="DIR", help="download received images into DIR")
    p = sub.add_parser("chat", help="interactive chat in the terminal")
    client_options(p)
    p.add_argument("--to", help="whom to talk to first (change with /to USER)")
    return parser


# ---- serve / token ---------------------------------------------------------------------------

def server_config(args: argparse.Namespace, extra: Sequence[str] = ()) -> Any:
    flags = {k: getattr(args, k, None) for k in (
        "data_dir", "store", "host", "tcp_port", "ws_port", "tls_cert", "tls_key", "heartbeat",
        "idle_timeout", "send_rate", "send_burst", "max_queue", "workers", "metrics_port",
        "node_id", "redis", "http_port", "media", "media_url", *extra)}
    return load_config(args.config, flags, dict(os.environ))


def serving_line(cfg: Any, tcp_port: int, ws_port: int, workers: int) -> str:
    return (f"chatd serving tcp://{cfg.host}:{tcp_port}"
            + (f" and ws://{cfg.host}:{ws_port}/ws" if cfg.ws_port >= 0 else "")
            + f" (store {redact(cfg.store_url)}"
            + (f", {workers} workers" if workers > 1 else "") + "); Ctrl-C stops")


async def run_serve(args: argparse.Namespace) -> int:
    cfg = server_config(args).validate()
    check_extras(cfg)
    workers = cfg.processes
    if workers > 1:
        return await run_supervisor(cfg, workers)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, cfg)
        print(serving_line(cfg, server.tcp_port, server.ws_port, 1), file=sys.stderr,
              flush=True)
        if server.metrics_port >= 0:
            print(f"chatd metrics on http://{cfg.host}:{server.metrics_port}/metrics",
                  file=sys.stderr, flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                print(f"chatd: {signal.Signals(signum).name}, shutting down", file=sys.stderr,
                      flush=True)
                server.stop()
                break
    return 0


async def run_supervisor(cfg: Any, workers: int) -> int:
    from chatd.server.workers import Supervisor

    sup = Supervisor(cfg, workers)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            final = await nursery.start(sup.run)
            print(serving_line(final, final.tcp_port, final.ws_port, workers), file=sys.stderr,
                  flush=True)
            if sup.metrics_port >= 0:
                print(f"chatd metrics on http://{cfg.host}:{sup.metrics_port}/metrics",
                      file=sys.stderr, flush=True)
            async for signum in signals:
                print(f"chatd: {signal.Signals(signum).name}, shutting down", file=sys.stderr,
                      flush=True)
                await sup.stop()
                nursery.cancel_scope.cancel()
                break
    return 0


async def run_migrate(args: argparse.Namespace) -> int:
    cfg = server_config(args)
    check_store_url(cfg.store_url)
    if cfg.store_url.startswith("cassandra:"):
        from chatd.store.cql import migrate

        before, after = await migrate(cfg.store_url)
        print(f"chatd: {redact(cfg.store_url)}: schema {before} -> {after}"
              + (" (up to date)" if before == after else ""))
    else:
        async with open_store(cfg.store_url):  # SQLite migrates when it opens
            pass
        print(f"chatd: {cfg.store_url}: schema up to date")
    return 0


async def run_token(args: argparse.Namespace) -> int:
    cfg = server_config(args).validate()
    secret = load_or_create_secret(cfg.data_dir)
    token = make_token(secret, args.user, args.device, args.ttl)
    if cfg.store_url.startswith("memory://"):
        print("chatd: memory:// store: the user is known once it connects", file=sys.stderr)
    else:
        async with open_store(cfg.store_url) as store:
            await store.add_user(args.user)
    print(token)
    from chatd.web.app import sign_in_link
    print(f"chatd: sign in on the web: {sign_in_link(cfg, token)}", file=sys.stderr)
    return 0


async def run_admin(args: argparse.Namespace) -> int:
    from chatd.admin.command import run_admin

    return await run_admin(args, server_config(args).validate())


async def run_analytics(args: argparse.Namespace) -> int:
    from chatd.analytics.command import run_analytics

    return await run_analytics(args)


# ---- clients --------------------------------------------------------------------------------

def event_json(event: Any) -> dict[str, Any]:
    import chatd_client as cc

    if isinstance(event, cc.Message):
        out: dict[str, Any] = {"event": "message", "conv": event.conv, "seq": event.seq,
                               "from": event.sender, "device": event.device, "id": event.id,
                               "ts": event.ts}
        try:
            out["text"] = event.body.decode()
        except UnicodeDecodeError:
            out["body_b64"] = base64.b64encode(event.body).decode()
        if event.group:
            out["group"] = event.group
        if event.media:
            out["media"] = [{"id": m.id, "mime": m.mime, "size": m.size, "w": m.width,
                             "h": m.height} for m in event.media]
        return out
    if isinstance(event, (cc.Delivered, cc.Read)):
        return {"event": "delivered" if isinstance(event, cc.Delivered) else "read",
                "conv": event.conv, "seqs": list(event.seqs), "by": event.by, "ts": event.ts}
    if isinstance(event, cc.ServerError):
        return {"event": "error", "code": event.code, "name": event.name,
                "message": event.message}
    return {"event": type(event).__name__.lower(), **dataclasses.asdict(event)}


async def run_send(args: argparse.Namespace) -> int:
    import chatd_client as cc

    async with cc.connect(args.url.split(","), need_token(args), args.device,
                          ca_file=args.ca_file) as client:
        if args.image:
            ack = await client.send_image(args.to, args.image, args.text, id=args.id)
        else:
            ack = await client.send(args.to, args.text, id=args.id)
    print(json.dumps({"event": "sent", "id": ack.id, "conv": ack.conv, "seq": ack.seq,
                      "ts": ack.ts}), flush=True)
    return 0


async def run_listen(args: argparse.Namespace) -> int:
    import chatd_client as cc

    # The client acknowledges only the events taken from events(): with --count N, the N
    # messages printed (and the events before them); the rest stay pending on the server.
    # Leaving the connection acknowledges what was taken before saying goodbye.
    seen = 0
    with trio.move_on_after(args.timeout if args.timeout else float("inf")):
        async with cc.connect(args.url.split(","), need_token(args), args.device,
                              ca_file=args.ca_file) as client:
            async for event in client.events():
                out = event_json(event)
                if args.save_media and isinstance(event, cc.Message):
                    os.makedirs(args.save_media, exist_ok=True)
                    for i, m in enumerate(out.get("media", ())):
                        ext = m["mime"].split("/")[1]
                        path = os.path.join(args.save_media, f"{m['id'][:16]}.{ext}")
                        try:
                            m["path"] = await client.download(event.media[i], path)
                        except cc.MediaError as exc:
                            m["error"] = str(exc)
                print(json.dumps(out), flush=True)
                if isinstance(event, cc.Message):
                    if args.read:
                        await client.mark_read(event.conv, event.seq)
                    seen += 1
                    if args.count is not None and seen >= args.count:
                        break
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runners = {"serve": run_serve, "migrate": run_migrate, "token": run_token,
               "send": run_send, "listen": run_listen, "admin": run_admin,
               "analytics": run_analytics}
    try:
        with single_errors():  # trio nurseries wrap errors: report the one
            if args.command == "chat":
                from chatd.chat import run_chat

                return trio.run(run_chat, args)
            return trio.run(runners[args.command], args)
    except (ConfigError, BadStoreURL, MissingExtra) as exc:
        print(f"chatd: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:  # e.g. Cassandra unreachable, or its schema not made yet
        print(f"chatd: store: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except WorkerFailed as exc:  # a worker of `chatd serve --workers N` did not start
        print(f"chatd: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"chatd: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        import chatd_client as cc

        if isinstance(exc, (cc.ChatdError, cc.ConnectionLost)):
            print(f"chatd: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
