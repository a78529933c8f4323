"""Images: uploads/s and MiB/s of ~2 MB photos at 1 and 16 concurrent uploaders, the latency of
a dedup hit ("already here"), download MiB/s, the node's RSS during 16 concurrent uploads of
large photos (bounded: streamed to disk, re-encoded one per core but one at a time, each in a
child process), and the 1:1 message latency of an unrelated chat while uploads run against the
same chat with no uploads, same run (bar: p99 within 2x). The node is `chatd serve
--http-port` in its own process; uploads skip the SDK's own compression (a phone does that on
its own CPU, here it would take the node's).

Profile (2026-12-02, py-spy --gil on the node during `--quick`, 2 shared cores): of 2,665
samples holding the GIL, 920 were the re-encode worker thread inside Pillow's JPEG encoder
(`Image.save` -> `ImageFile._encode_tile` -> `encoder.encode`): into a BytesIO Pillow encodes in
Python-visible chunks with the GIL held, and a progressive JPEG does all its work in the last
chunk. Alone, a 2560 x 1920 encode kept the loop's thread from running for 951 ms into a
BytesIO, 38 ms into a file (`encode_to_file` releases the GIL). Hashing (hashlib releases the
GIL) and file writes did not show. Encoding into a file cut the worker's GIL samples from 920
to 64; decoding and resizing still held it for 40-80 ms at a time, so re-encoding now runs in a
child process at nice 10 (chatd.media.images): nothing of it holds the node's GIL, and the
chat gets the CPU first.

Figures, same machine, alternating runs of the code before (a80470b) and after, load average
about 10 on the 2 cores (other work running): chat p99 while uploading 216 / 200 / 326 ms
before (ratio to quiet 10.6 / 4.8 / 4.7 x), 70 / 82 / 51 ms after (0.9 / 2.6 / 1.9 x); p50
10.5-12.4 ms before, 6.7-7.4 ms after. A child per image cost throughput: 16 uploaders 2.3-4.1
uploads/s before, 1.0-1.4 after (starting Python and Pillow takes 0.1 s of CPU, 0.3 s here);
keeping the children between jobs (chatd.media.workers) brought it back: three runs after
that, same load, 2.1 / 3.7 / 5.5 uploads/s, chat p99 while uploading 74 / 24 / 75 ms against
68 / 14 / 40 ms quiet (1.09 / 1.76 / 1.89 x), p50 3.5-4.0 ms both ways; the node's RSS with
its re-encoding child 58-84 MB before the uploads, 181 MB at the peak (in-process before:
102 -> 253 MB)."""

from __future__ import annotations

import hashlib
import io
import os
import random
import statistics
import tempfile
import time
from typing import Any

import chatd_client
import chatd_client.media
import trio
from PIL import Image

from chatd.protocol import frames as F

from .common import ChatdProcess, free_port, percentile, save

MiB = 1024 * 1024


def noisy_jpeg(width: int, height: int, seed: int, quality: int) -> bytes:
    rnd = random.Random(seed)
    img = Image.frombytes("RGB", (width, height), rnd.randbytes(width * height * 3))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def make_photos(folder: str, n: int, width: int, height: int, quality: int,
                seed0: int) -> list[str]:
    base = noisy_jpeg(width, height, seed0, quality)
    paths = []
    for i in range(n):  # distinct files (a different trailing comment), same decode cost
        path = os.path.join(folder, f"p{seed0}-{i}.jpg")
        with open(path, "wb") as f:
            f.write(base[:-2] + b"\xff\xfe\x00\x06" + i.to_bytes(4, "big") + b"\xff\xd9")
        paths.append(path)
    return paths


async def upload(client: Any, path: str) -> F.Media:
    """The node's work on an upload: the SDK's own compression is left out (a phone does it
    on its own CPU; here it would take the node's cores)."""
    media: F.Media = await chatd_client.media.upload(client, path, compress_first=False)
    return media


async def upload_all(client: Any, paths: list[str], concurrency: int) -> float:
    """Seconds to upload every path with `concurrency` uploads at once."""
    todo = list(paths)
    t0 = time.perf_counter()

    async def worker() -> None:
        while todo:
            await upload(client, todo.pop())

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return time.perf_counter() - t0


async def chat_latency(alice: Any, bob: Any, seconds: float) -> list[float]:
    """alice -> bob round trips (send to Message received), one at a time, for seconds."""
    out: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        await alice.send("bob", b"ping")
        await bob.next_event(chatd_client.Message)
        out.append((time.perf_counter() - t0) * 1000)
    return sorted(out)


async def run(node: ChatdProcess, http_port: int, folder: str, quick: bool) -> dict[str, Any]:
    url = f"tcp://127.0.0.1:{node.port}"
    res: dict[str, Any] = {}
    n1, n16, big = (4, 16, 8) if quick else (8, 48, 16)
    small1 = make_photos(folder, n1, 1600, 1200, 90, 1)
    small16 = make_photos(folder, n16, 1600, 1200, 90, 2)
    res["photo_bytes"] = os.path.getsize(small1[0])
    async with chatd_client.connect(url, node.token("alice"), "up") as up, \
            chatd_client.connect(url, node.token("alice"), "phone") as alice, \
            chatd_client.connect(url, node.token("bob"), "phone") as bob, \
            chatd_client.connect(url, node.token("carol"), "phone") as carol:
        for label, paths, conc in (("1", small1, 1), ("16", small16, 16)):
            took = await upload_all(up, paths, conc)
            total = sum(os.path.getsize(p) for p in paths)
            res[f"uploads_per_s_{label}"] = round(len(paths) / took, 2)
            res[f"upload_mib_per_s_{label}"] = round(total / MiB / took, 2)
        # dedup: the slot answers "already here"
        sha = hashlib.sha256(open(small1[0], "rb").read()).digest()  # noqa: SIM115
        lat = []
        for _ in range(50):
            t0 = time.perf_counter()
            slot = await up.request(lambda r: F.UploadSlot(rid=r, sha256=sha, size=1,
                                                            mime="image/jpeg"))
            lat.append((time.perf_counter() - t0) * 1000)
            assert isinstance(slot, F.Slot) and slot.media is not None
        res["dedup_hit_ms_p50"] = round(statistics.median(lat), 2)
        # downloads: carol gets 16 images (a PERMANENT chat keeps them)
        await up.set_mode("d:alice:carol", chatd_client.Mode.PERMANENT)
        media = [await upload(up, p) for p in small16[:16]]
        for i in range(0, len(media), 4):  # (previews count against the 64 KiB of a message)
            await up.send("carol", b"", media=tuple(media[i:i + 4]))
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i, m in enumerate(media):
                nursery.start_soon(carol.download, m, os.path.join(folder, f"d{i}.jpg"))
        took = time.perf_counter() - t0
        res["download_mib_per_s_16"] = round(sum(m.size for m in media) / MiB / took, 2)
        # an unrelated chat's latency without, then with, 16 uploaders running
        await up.set_mode("d:alice:bob", chatd_client.Mode.TEMPORARY)
        quiet = await chat_latency(alice, bob, 3 if quick else 6)
        larges = make_photos(folder, big, 4000, 3000, 97, 3)
        res["large_photo_bytes"] = os.path.getsize(larges[0])
        rss = [node.rss_kib()]
        res["rss_kib_before"] = rss[0]
        busy: list[float] = []
        async with trio.open_nursery() as nursery:
            async def sample() -> None:
                while True:
                    rss.append(node.rss_kib())
                    await trio.sleep(0.1)

            nursery.start_soon(sample)
            done = trio.Event()

            async def uploads() -> None:
                try:
                    await upload_all(up, larges, 16)
                finally:
                    done.set()

            nursery.start_soon(uploads)
            while not done.is_set():
                busy.extend(await chat_latency(alice, bob, 0.5))
            nursery.cancel_scope.cancel()
        busy.sort()
        res["rss_kib_peak_16_large_uploads"] = max(rss)
        res["chat_p50_ms_quiet"] = round(percentile(quiet, 50), 2)
        res["chat_p99_ms_quiet"] = round(percentile(quiet, 99), 2)
        res["chat_p50_ms_uploading"] = round(percentile(busy, 50), 2)
        res["chat_p99_ms_uploading"] = round(percentile(busy, 99), 2)
        res["chat_p99_ratio"] = round(res["chat_p99_ms_uploading"]
                                      / max(res["chat_p99_ms_quiet"], 0.001), 2)
    return res


def main(args: Any) -> dict[str, Any]:
    quick = bool(getattr(args, "quick", False))
    with tempfile.TemporaryDirectory() as tmp:
        http_port = free_port()
        node = ChatdProcess(os.path.join(tmp, "data"), ["alice", "bob", "carol"],
                            extra=("--http-port", str(http_port)))
        try:
            os.makedirs(os.path.join(tmp, "files"))
            res = trio.run(run, node, http_port, os.path.join(tmp, "files"), quick)
        finally:
            node.stop()
    res["bar_chat_p99_within_2x"] = res["chat_p99_ratio"] <= 2
    print(save("media", res))
    for k, v in res.items():
        print(f"{k:34} {v}")
    return res
