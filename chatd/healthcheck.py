"""`python -m chatd.healthcheck URL [--wait SECONDS]`: exit 0 if URL (a node's /readyz or
/healthz on its metrics port, chatd.server.metrics) answers 200, else 1 with the reason on
stderr. For health checks where no curl is installed: the container image's HEALTHCHECK and
the systemd unit's ExecStartPost (deploy/). Standard library only, so it starts fast."""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request


def check(url: str, wait: float = 0.0) -> int:
    """Exit status 0 if url answers 200, else 1 with the reason on stderr; retried for
    `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as answer:
                return 0 if answer.status == 200 else 1
        except urllib.error.HTTPError as exc:
            reason = exc.read().decode(errors="replace").strip() or str(exc)
        except OSError as exc:
            reason = str(exc)
        if time.monotonic() >= deadline:
            print(f"chatd: {url}: {reason}", file=sys.stderr)
            return 1
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chatd.healthcheck",
                                     description="exit 0 if URL answers 200")
    parser.add_argument("url", help="e.g. http://127.0.0.1:9464/readyz")
    parser.add_argument("--wait", type=float, default=0.0,
                        help="keep trying this many seconds")
    args = parser.parse_args(argv)
    return check(args.url, args.wait)


if __name__ == "__main__":
    sys.exit(main())
