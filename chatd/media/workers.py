"""Child processes that re-encode images (`python -m chatd.media.images`), kept between jobs:
starting one costs ~0.1 s of CPU (Python, Pillow), a good share of a photo's re-encoding.

A child takes one job at a time over its stdin/stdout (length-prefixed msgpack). One that
dies, or whose job is cancelled half-way (its state is then unknown), is killed and replaced
by a fresh one on the next job; at most `size` children are idle at once, and an idle child
ends on its own after a minute (chatd.media.images.IDLE), or when the node's end of its pipe
closes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any

import msgpack
import trio

from .images import Encoded, ImageError

log = logging.getLogger("chatd.media")
# chatd where this node found it, for the child's `-m chatd.media.images`
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_ANSWER = 64 * 1024  # an answer holds a preview (8 KiB) and a few fields


class Reencoders:
    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: list[Any] = []

    async def _start(self) -> Any:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (
            _ROOT, os.environ.get("PYTHONPATH"))))}
        return await trio.lowlevel.open_process(
            [sys.executable, "-m", "chatd.media.images"], stdin=-1, stdout=-1, env=env)

    async def run(self, src: str, dst: str) -> tuple[Encoded, bytes]:
        """(what chatd.media.images.reencode says, SHA-256 of dst); ImageError if the image
        is not taken or the child failed on it."""
        while self._idle and self._idle[-1].poll() is not None:  # (ended while idle)
            await _end(self._idle.pop())
        proc = self._idle.pop() if self._idle else await self._start()
        answer = None
        try:
            request = msgpack.packb([src, dst])
            await proc.stdin.send_all(len(request).to_bytes(4, "big") + request)
            head = await _read(proc.stdout, 4)
            if head is not None and int.from_bytes(head, "big") <= MAX_ANSWER:
                answer = await _read(proc.stdout, int.from_bytes(head, "big"))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            answer = None
        finally:
            if answer is not None and len(self._idle) < self.size:
                self._idle.append(proc)
            else:
                await _end(proc)
        if answer is None:
            log.warning("re-encoding failed: the child process ended (exit %s)",
                        proc.returncode)
            raise ImageError("not a readable image (the decoder failed)")
        status, *rest = msgpack.unpackb(answer)
        if status != 0:
            raise ImageError(str(rest[0])[:500])
        size, mime, width, height, preview, sha = rest
        return Encoded(size, mime, width, height, preview), sha

    async def aclose(self) -> None:
        while self._idle:
            await _end(self._idle.pop())


async def _read(stream: Any, n: int) -> bytes | None:
    """Exactly n bytes, or None at end of stream."""
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


async def _end(proc: Any) -> None:
    with trio.CancelScope(shield=True), contextlib.suppress(OSError):
        proc.kill()
        await proc.wait()
        await proc.stdin.aclose()
        await proc.stdout.aclose()
