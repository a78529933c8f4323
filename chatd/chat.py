"""`chatd chat`: a small interactive terminal chat with sent / delivered / read marks.

Type a line to send it to the current peer; `/to USER` (or `/to #GROUP`) switches peer;
`/image PATH` sends an image; `/quit` leaves. Incoming messages are marked read as they are
shown (the chat is open on screen). The peer's presence is shown as it changes: "bob:
online", "bob: last seen 5 minutes ago".
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import chatd_client as cc
import trio

from chatd.util import need_token

BLUE, DIM, RESET = "\033[34m", "\033[2m", "\033[0m"
HELP = ("type a message and Enter to send; /to USER or /to #GROUP switches peer;"
        " /image PATH sends an image; /quit leaves")


def clock(ts_ms: int) -> str:
    return time.strftime("%H:%M", time.localtime(ts_ms / 1000))


class ChatView:
    def __init__(self, out: Any, color: bool) -> None:
        self.out = out
        self.color = color
        self.mine: dict[tuple[str, int], str] = {}  # (conv, seq) -> text, for receipts

    def paint(self, text: str, color: str) -> str:
        return f"{color}{text}{RESET}" if self.color else text

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def sent(self, to: str, ack: cc.SentAck, text: str) -> None:
        self.mine[(ack.conv, ack.seq)] = text
        self.line(f"[{clock(ack.ts)}] you -> {to}: {text}  ✓")

    def receipt(self, event: cc.Delivered | cc.Read) -> None:
        for seq in event.seqs:
            text = self.mine.get((event.conv, seq), f"#{seq}")
            if isinstance(event, cc.Read):
                self.line(self.paint(f"  ✓✓ read by {event.by}: {text}", BLUE))
            else:
                self.line(f"  ✓✓ delivered to {event.by}: {text}")

    def message(self, m: cc.Message, me: str) -> None:
        who = "you (other device)" if m.sender == me else m.sender
        where = f"#{m.group} " if m.group else ""
        if m.event is not None:
            details = ", ".join(f"{k}={v}" for k, v in m.event.items() if k != "kind")
            self.line(self.paint(f"[{clock(m.ts)}] {where}-- {m.event['kind']} ({details})",
                                 DIM))
        else:
            images = "".join(f" [image {i.width}x{i.height}, {i.size // 1024} KiB]"
                             for i in m.media)
            self.line(f"[{clock(m.ts)}] {where}{who}: {m.text}{images}")

    def presence(self, p: cc.Presence) -> None:
        self.line(self.paint(f"-- {p.user}: {cc.presence_text(p)}", DIM))


async def run_chat(args: argparse.Namespace) -> int:
    view = ChatView(sys.stdout, sys.stdout.isatty())
    peer: str | None = args.to
    async with cc.connect(args.url.split(","), need_token(args), args.device,
                          ca_file=args.ca_file) as client:
        view.line(view.paint(f"chatd: you are {client.user} ({client.device}). {HELP}", DIM))
        if peer and not peer.startswith("#"):
            await client.watch([peer])

        async def show_events() -> None:
            async for event in client.events():
                if isinstance(event, cc.Message):
                    view.message(event, client.user)
                    if event.sender != client.user:
                        await client.mark_read(event.conv, event.seq)
                elif isinstance(event, (cc.Delivered, cc.Read)):
                    if event.by != client.user:  # not my own other device's read marks
                        view.receipt(event)
                elif isinstance(event, cc.Presence):
                    view.presence(event)
                elif isinstance(event, cc.Disconnected):
                    view.line(view.paint(f"-- disconnected ({event.reason}), reconnecting", DIM))
                elif isinstance(event, cc.Connected):
                    view.line(view.paint("-- connected", DIM))
                elif isinstance(event, cc.ServerError):
                    view.line(f"!! {event.name}: {event.message}")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(show_events)
            while True:
                line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
                if not line or line.strip() == "/quit":
                    break
                text = line.rstrip("\n")
                if text.startswith("/to "):
                    peer = text[4:].strip()
                    view.line(view.paint(f"-- talking to {peer}", DIM))
                    if not peer.startswith("#"):
                        await client.watch([peer])
                elif text.startswith("/") and not text.startswith("/image "):
                    view.line(HELP)
                elif not text:
                    continue
                elif peer is None:
                    view.line("!! choose a peer first: /to USER")
                else:
                    to, group = (None, peer[1:]) if peer.startswith("#") else (peer, None)
                    try:
                        if text.startswith("/image "):
                            path = text[7:].strip()
                            ack = await client.send_image(to, path, group=group)
                            text = f"[image {path}]"
                        else:
                            ack = await client.send(to, text, group=group)
                    except (cc.ChatdError, cc.MediaError, OSError) as exc:
                        view.line(f"!! {exc}")
                    else:
                        view.sent(peer, ack, text)
            nursery.cancel_scope.cancel()
    return 0
