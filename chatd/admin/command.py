"""`chatd admin devices|revoke|delete-user`: the CLI over chatd.admin.ops."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Callable
from typing import Any

from chatd.store import FanoutJobs, Store, open_store

from .ops import AdminError, delete_user, list_devices, revoke


def add_admin(sub: Any, server_options: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("admin", help="a user's devices, revoking tokens, deleting a user")
    acts = p.add_subparsers(dest="action", required=True)
    a = acts.add_parser("devices", help="list a user's devices (cursor, revocation) and"
                        " last seen")
    server_options(a)
    a.add_argument("user")
    a.add_argument("--json", action="store_true", help="print JSON")
    a = acts.add_parser("revoke", help="void a user's tokens (all, or one device's) issued"
                        " until now; their open connections end within a second or two")
    server_options(a)
    a.add_argument("user")
    a.add_argument("--device", help="only this device's tokens")
    a = acts.add_parser("delete-user", help="revoke, leave every group, and forget the"
                        " user's devices, inbox, receipts state, last seen and privacy")
    server_options(a)
    a.add_argument("user")
    a.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def _confirm(user: str) -> bool:
    if not sys.stdin.isatty():
        raise AdminError("delete-user needs --yes when not run from a terminal")
    print(f"Delete {user!r} and their data (their sent messages stay in the chats)?"
          f" Type the user name to confirm: ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip() == user


async def run_admin(args: argparse.Namespace, cfg: Any) -> int:
    """cfg: the validated server Config (its store is the one acted on)."""
    try:
        if cfg.store_url == "memory://":
            raise AdminError("memory:// lives inside the running node: there is nothing to"
                             " administer from outside")
        if args.action == "delete-user" and not args.yes and not _confirm(args.user):
            print("chatd: not deleted", file=sys.stderr)
            return 1
        async with open_store(cfg.store_url) as store:
            if isinstance(store, FanoutJobs):
                # the "left" events' fan-out is left to the running nodes (their revocation
                # poll runs it), which push them to connected members; this process pushes
                # to nobody (it runs what they leave: chatd.admin.ops)
                store.fanout_mode = "external"
            try:  # (inside: the store's nursery would wrap the error)
                return await _act(store, args, cfg)
            except AdminError as exc:
                error = exc
    except AdminError as exc:
        error = exc
    print(f"chatd: {error}", file=sys.stderr)
    return 1


async def _act(store: Store, args: argparse.Namespace, cfg: Any) -> int:
    if args.action == "devices":
        info = await list_devices(store, args.user)
        if args.json:
            print(json.dumps({"user": info.user, "last_seen": info.last_seen,
                              "hides_last_seen": info.hides_last_seen, "groups": info.groups,
                              "devices": [vars(d) for d in info.devices]}))
            return 0
        print(f"user {info.user}: last seen {_when(info.last_seen)}"
              + (" (hidden from others)" if info.hides_last_seen else "")
              + f", {len(info.groups)} group(s)")
        print(f"{'DEVICE':<24} {'CURSOR':>8}  REVOKED UNTIL")
        for d in info.devices:
            print(f"{d.device:<24} {d.cursor:>8}  {_when(d.revoked_at)}")
        return 0
    if args.action == "revoke":
        at = await revoke(store, args.user, args.device)
        what = f"device {args.device!r} of {args.user!r}" if args.device else \
            f"every device of {args.user!r}"
        print(f"chatd: revoked the tokens of {what} issued until {_when(at)};"
              f" open connections end within {cfg.revocation_poll:g}s")
        return 0
    groups = await delete_user(store, args.user, settle=2 * cfg.revocation_poll)
    print(f"chatd: deleted {args.user!r} (left {len(groups)} group(s));"
          " their sent messages stay in the chats")
    return 0
