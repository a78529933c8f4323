"""The XMPP side of `bench versus`: ejabberd started for the run, and a raw-socket XMPP client
shaped like bench.common.RawClient so the same load loop drives it.

ejabberd is Debian's package (23.01), installed with apt-get when missing (not in CI). The
harness starts it as a child process, `erl ... -s ejabberd` (what `ejabberdctl foreground`
runs), with its own config, Mnesia spool, logs, node name and cookie in a temporary dir, on a
free port of 127.0.0.1; its Erlang distribution listens on 127.0.0.1 on a port of its own
(no epmd is started). Users: `auth_method: anonymous` with `anonymous_protocol: login_anon`,
so SASL PLAIN accepts any user name and password and the session lives while its connection
does; nothing is registered or stored. No module is loaded: no roster, no carbons, no
offline storage, no MAM: ejabberd's cheapest 1:1 path, online only.

The client speaks XMPP over plain TCP on loopback: stream open, SASL PLAIN, stream restart,
resource bind, session, initial presence; then `<message type='chat' id=...>` stanzas to the
peer's full JID. The receiver answers each message with a `<message>` carrying a XEP-0184
`<received/>` with the same id, which the sender counts as delivered, as chatd's DELIVERED
receipt is counted. Stanzas are split by a small tag scanner (no XML library), enough for
what ejabberd sends on this path.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from typing import Any

import trio

from chatd.protocol import Frame
from chatd.protocol import frames as F

from .common import cpu_seconds, free_port, wait_listening

DOMAIN = "localhost"
RESOURCE = "bench"
ERL_LIBS = "/usr/lib/x86_64-linux-gnu"  # where Debian puts ejabberd and its deps

CONFIG = """\
# bench versus: a throw-away ejabberd, online 1:1 only (nothing stored)
loglevel: warning
log_rotate_count: 0
hosts:
  - {domain}
certfiles: []
listen:
  -
    port: {port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    shaper: none
    access: all
    starttls: false
auth_method: anonymous
anonymous_protocol: login_anon
allow_multiple_connections: true
disable_sasl_mechanisms: ["digest-md5", "scram-sha-1", "x-oauth2"]
shaper: {{}}
acl: {{}}
access_rules: {{}}
modules: {{}}
"""


def ensure_installed() -> None:
    """apt-get install ejabberd when it is missing (as scripts/_services.sh does Redis)."""
    if os.path.isdir(os.path.join(ERL_LIBS, "ejabberd-23.01")) and shutil.which("erl"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError("ejabberd is missing and cannot be installed here (need root and"
                           " apt-get): apt-get install ejabberd")
    print("  installing ejabberd (apt-get install ejabberd)...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "ejabberd"], check=True, env=env,
                   stdout=subprocess.DEVNULL)


class EjabberdProcess:
    """ejabberd on a free loopback port, in a temporary dir, until stop()."""

    def __init__(self) -> None:
        ensure_installed()
        self.dir = tempfile.mkdtemp(prefix="chatd-ejabberd-")
        self.port = free_port()
        config = os.path.join(self.dir, "ejabberd.yml")
        with open(config, "w") as f:
            f.write(CONFIG.format(domain=DOMAIN, port=self.port))
        os.makedirs(os.path.join(self.dir, "spool"))
        os.makedirs(os.path.join(self.dir, "logs"))
        node = f"bench{secrets.token_hex(4)}@localhost"
        env = {**os.environ, "ERL_LIBS": ERL_LIBS, "EJABBERD_CONFIG_PATH": config,
               "EJABBERD_LOG_PATH": os.path.join(self.dir, "logs", "ejabberd.log"),
               "ERL_CRASH_DUMP": os.path.join(self.dir, "logs", "erl_crash.dump")}
        with open(os.path.join(self.dir, "logs", "stderr.log"), "wb") as err:
            self.proc = subprocess.Popen(
                ["erl", "-sname", node, "-setcookie", secrets.token_hex(16),
                 "-start_epmd", "false", "-erl_epmd_port", str(free_port()),
                 "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
                 "-noinput", "-mnesia", "dir", f'"{self.dir}/spool"', "-s", "ejabberd"],
                env=env, cwd=self.dir, stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_listening(self.port, self.proc, timeout=60)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"ejabberd did not start: {e}") from None

    def pids(self) -> list[int]:
        """beam.smp (erl execs it) and its helpers (erl_child_setup, inet_gethost)."""
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    todo += [int(p) for p in f.read().split()]
            except FileNotFoundError:
                pass
        return out

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.pids():
            try:
                total += cpu_seconds(p)
            except FileNotFoundError:
                pass
        return total

    def stop(self) -> None:
        self.proc.terminate()  # the VM stops on SIGTERM (init:stop)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- the client ---------------------------------------------------------------------------

# a tag: <name ...>, </name>, <name .../>; comments, CDATA and DTDs do not occur here
_TAG = re.compile(rb"<(/?)([^\s/>]+)[^>]*?(/?)>")
_ID = re.compile(rb"\sid=['\"]([^'\"]*)['\"]")
_FROM_USER = re.compile(rb"\sfrom=['\"]([^@'\"]*)@")
_ESCAPE = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;",
                         '"': "&quot;"})


def _attr(s: str) -> str:
    return s.translate(_ESCAPE)


class XmppError(RuntimeError):
    pass


class StanzaSplitter:
    """Bytes in, top-level stanzas (whole elements under <stream:stream>) out. The stream
    header (and an XML declaration) is skipped, a new one too (after SASL both sides open a
    new stream); the stream's end raises EOFError. The buffer is cut once per feed: a read
    may bring thousands of stanzas."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.buf + data if self.buf else data
        out: list[bytes] = []
        depth, start, consumed = 0, 0, 0
        for m in _TAG.finditer(buf):
            closing, name, empty = m.group(1), m.group(2), m.group(3)
            if depth == 0:
                if name.startswith(b"?") or (name == b"stream:stream" and not closing):
                    consumed = m.end()
                    continue
                if name == b"stream:stream":
                    raise EOFError("the server closed the stream")
                start = m.start()
            if closing:
                depth -= 1
            elif not empty:
                depth += 1
            if depth == 0:
                out.append(buf[start:m.end()])
                consumed = m.end()
        self.buf = buf[consumed:]
        return out


class XmppClient:
    """One XMPP session, shaped like bench.common.RawClient for the load loop: send() takes
    F.Send frames (a message to `to`'s full JID; an empty body makes it a XEP-0184 receipt
    for that id) and batch() returns an F.Deliver for each message that arrived."""

    def __init__(self, stream: trio.SocketStream, user: str) -> None:
        self.stream = stream
        self.user = user
        self.jid = f"{user}@{DOMAIN}/{RESOURCE}"
        self.split = StanzaSplitter()
        self.pending: list[bytes] = []
        self.lock = trio.Lock()

    @classmethod
    async def connect(cls, port: int, user: str, host: str = "127.0.0.1") -> XmppClient:
        c = cls(await trio.open_tcp_stream(host, port), user)
        await c._open_stream()
        features = await c._stanza()
        if b"PLAIN" not in features:
            raise XmppError(f"no SASL PLAIN offered: {features[:300]!r}")
        creds = base64.b64encode(b"\0" + user.encode() + b"\0secret").decode()
        await c.stream.send_all(
            b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
            + creds.encode() + b"</auth>")
        answer = await c._stanza()
        if not answer.startswith(b"<success"):
            raise XmppError(f"SASL PLAIN refused: {answer[:300]!r}")
        await c._open_stream()
        await c._stanza()  # features: bind, session
        await c._iq(b"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>"
                    + RESOURCE.encode() + b"</resource></bind>")
        await c._iq(b"<session xmlns='urn:ietf:params:xml:ns:xmpp-session'/>")
        await c.stream.send_all(b"<presence/>")
        return c

    async def _open_stream(self) -> None:
        await self.stream.send_all(
            f"<?xml version='1.0'?><stream:stream to='{DOMAIN}' xmlns='jabber:client'"
            " xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>".encode())

    async def _iq(self, payload: bytes) -> bytes:
        iq_id = secrets.token_hex(4).encode()
        await self.stream.send_all(b"<iq type='set' id='" + iq_id + b"'>" + payload + b"</iq>")
        while True:
            s = await self._stanza()
            if s.startswith(b"<iq") and b"id='" + iq_id + b"'" in s.replace(b'"', b"'"):
                if b"type='result'" not in s.replace(b'"', b"'"):
                    raise XmppError(f"iq refused: {s[:300]!r}")
                return s

    async def _stanza(self) -> bytes:
        while not self.pending:
            data = await self.stream.receive_some(262144)
            if not data:
                raise EOFError
            self.pending += self.split.feed(data)
        return self.pending.pop(0)

    async def batch(self) -> list[Frame]:
        """Every message that one read brings (at least one), as F.Deliver frames."""
        while True:
            stanzas, self.pending = self.pending, []
            if not stanzas:
                data = await self.stream.receive_some(262144)
                if not data:
                    raise EOFError
                stanzas = self.split.feed(data)
            frames: list[Frame] = []
            for s in stanzas:
                if not s.startswith(b"<message"):
                    continue
                if b"type='error'" in s or b'type="error"' in s:
                    raise XmppError(f"message bounced: {s[:300]!r}")
                m, who = _ID.search(s), _FROM_USER.search(s)
                frames.append(F.Deliver(q=1, conv="x", seq=1, ts=0,
                                        sender=who.group(1).decode() if who else "",
                                        device=RESOURCE, id=m.group(1).decode() if m else "",
                                        body=b""))
            if frames:
                return frames

    async def send(self, *frames: Frame) -> None:
        parts = []
        for f in frames:
            if not isinstance(f, F.Send) or f.to is None:
                continue  # (acks and the like have no XMPP counterpart here)
            to, mid = _attr(f"{f.to}@{DOMAIN}/{RESOURCE}"), _attr(f.id)
            if f.body:
                body = f.body.decode("utf-8", "replace").translate(_ESCAPE)
                parts.append(f"<message to='{to}' id='{mid}' type='chat'><body>{body}</body>"
                             "<request xmlns='urn:xmpp:receipts'/></message>")
            else:
                parts.append(f"<message to='{to}' id='{mid}'><received"
                             f" xmlns='urn:xmpp:receipts' id='{mid}'/></message>")
        if parts:
            async with self.lock:
                await self.stream.send_all("".join(parts).encode())


def token(user: str) -> Any:
    """The XMPP side has no tokens: the user name is the login (any password)."""
    return user
