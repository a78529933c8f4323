// The protocol module against docs/vectors/protocol-v1.json: every frame decodes to its map
// and encodes to its bytes exactly, whole and byte by byte; every error stream fails with its code.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import {
  Connection, decodeBody, encodeBody, ErrorCode, type Frame, NEED_DATA, PEER_CLOSED, ProtocolError,
} from "../src/protocol/index.js";
import { fromMap, toMap } from "../src/protocol/schema.js";
import { BY_NAME } from "../src/protocol/frames.js";

const VECTORS = JSON.parse(readFileSync(new URL("../../../docs/vectors/protocol-v1.json", import.meta.url), "utf8"));
const hex = (s: string) => Uint8Array.from(s.match(/../g) ?? [], (h) => parseInt(h, 16));
const toHex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

/** The vectors' JSON map (bin as {"bin": hex}) as wire values. */
function wire(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(wire);
  if (v && typeof v === "object") {
    const o = v as Record<string, unknown>;
    if (Object.keys(o).length === 1 && typeof o.bin === "string") return hex(o.bin);
    return Object.fromEntries(Object.entries(o).map(([k, x]) => [k, wire(x)]));
  }
  return v;
}

function frameOf(map: Record<string, unknown>, name: string): Frame {
  const spec = BY_NAME.get(name as Frame["type"])!;
  return { type: spec.name, ...fromMap(spec.fields, wire(map), name) } as Frame;
}

function events(conn: Connection): Array<Frame | symbol> {
  const out: Array<Frame | symbol> = [];
  for (;;) {
    const e = conn.nextEvent();
    out.push(e as Frame | symbol);
    if (e === NEED_DATA || e === PEER_CLOSED) return out;
  }
}

test("there are vectors", () => {
  assert.equal(VECTORS.protocol, 1);
  assert.ok(VECTORS.frames.length >= 40);
  assert.ok(VECTORS.errors.length >= 10);
});

for (const [i, v] of (VECTORS.frames as any[]).entries()) {
  test(`frame ${i} ${v.name}: decodes, and encodes byte-exact`, () => {
    const frame = decodeBody(hex(v.msgpack));
    assert.equal(frame.type, v.name);
    const spec = BY_NAME.get(frame.type)!;
    assert.equal(spec.type, v.type);
    assert.deepEqual({ t: v.type, ...toMap(spec.fields, frame as any) }, wire(v.map));
    assert.equal(toHex(encodeBody(frame)), v.msgpack);
    assert.equal(toHex(encodeBody(frameOf(v.map, v.name))), v.msgpack);
  });

  test(`frame ${i} ${v.name}: over TCP framing, whole and byte by byte`, () => {
    const role = BY_NAME.get(v.name)!.origin & 2 ? "client" : "server";
    const sender = new Connection(role === "client" ? "server" : "client", "stream");
    assert.equal(toHex(sender.frameBytes(encodeBody(frameOf(v.map, v.name)))), v.tcp);
    for (const chunking of ["whole", "bytes"]) {
      const conn = new Connection(role, "stream");
      // (past the handshake: a client takes only Welcome or Error first, a server Hello)
      if (v.name !== "Hello") {
        (conn as any).state = "open";
        (conn as any).helloDone = true;
      }
      const bytes = hex(v.tcp);
      const got: Array<Frame | symbol> = [];
      if (chunking === "whole") {
        conn.receiveData(bytes);
        got.push(...events(conn));
      } else {
        for (const b of bytes) {
          conn.receiveData(Uint8Array.of(b));
          got.push(...events(conn));
        }
      }
      const frames = got.filter((e) => typeof e !== "symbol") as Frame[];
      assert.equal(frames.length, 1);
      assert.equal(toHex(encodeBody(frames[0]!)), v.msgpack);
    }
  });
}

for (const v of VECTORS.errors as any[]) {
  for (const chunking of ["whole", "bytes"]) {
    test(`error stream "${v.name}" (${chunking}): ${v.code_name}`, () => {
      const conn = new Connection("server", "stream");
      const bytes = hex(v.tcp);
      const chunks = chunking === "whole" ? [bytes] : Array.from(bytes, (b) => Uint8Array.of(b));
      if (v.eof) chunks.push(new Uint8Array(0));
      let failed: ProtocolError | null = null;
      try {
        for (const chunk of chunks) {
          conn.receiveData(chunk);
          for (const e of events(conn)) {
            // a server answers Hello with Welcome, then goes on reading
            if (typeof e !== "symbol" && e.type === "Hello") {
              conn.send({ type: "Welcome", version: 1, user: "u", device: "d", session: "s",
                serverTime: 0, heartbeatMs: 1, maxFrame: 1 });
            }
          }
        }
      } catch (exc) {
        if (!(exc instanceof ProtocolError)) throw exc;
        failed = exc;
      }
      assert.ok(failed, "no protocol error");
      assert.equal(failed.code, v.code);
      assert.equal(conn.state, "closed");
    });
  }
}

test("a client refuses a frame before Welcome, and a server-only frame from its own side", () => {
  const conn = new Connection("client", "message");
  conn.send({ type: "Hello", version: 1, token: "t" });
  conn.receiveData(encodeBody({ type: "Synced", upto: 1 }));
  assert.throws(() => conn.nextEvent(), (e: ProtocolError) => e.code === ErrorCode.MALFORMED);
  assert.throws(() => new Connection("client").send({ type: "Sent", id: "x", conv: "d:a:b", seq: 1, ts: 0 }));
});

test("bad bodies are protocol errors, never other exceptions", () => {
  const bad = ["c1", "93010203", "81a17463", "82a17403a16ec3", "82a17403a16ecb3ff0000000000000" + "00",
    "d6ff00000000", "81a174d4010a", "81a17403ff", "82a17403a16e01a1", "83a17403a16e01a16e"];
  for (const h of bad) {
    assert.throws(() => decodeBody(hex(h)), ProtocolError, h);
  }
  // random bytes: a frame or a ProtocolError, nothing else
  let seed = 7;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  for (let i = 0; i < 3000; i++) {
    const b = Uint8Array.from({ length: 1 + Math.floor(rnd() * 24) }, () => Math.floor(rnd() * 256));
    if (rnd() < 0.5) b[0] = 0x80 + (b[0]! % 16);
    try {
      decodeBody(b);
    } catch (exc) {
      assert.ok(exc instanceof ProtocolError, `${toHex(b)}: ${exc}`);
    }
  }
});

test("too many containers and oversized frames are refused", () => {
  const nested = encodeBody({ type: "Group", rid: 1, group: "g", name: "n", members: [], admins: [] });
  assert.ok(decodeBody(nested));
  assert.throws(() => decodeBody(nested, 1024, 2), (e: ProtocolError) => e.code === ErrorCode.MALFORMED);
  assert.throws(() => decodeBody(nested, 4), (e: ProtocolError) => e.code === ErrorCode.TOO_LARGE);
});
