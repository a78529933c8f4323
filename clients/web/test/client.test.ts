// The WebSocket client's hand-over rules, with a stand-in for the browser's WebSocket object
// (the real one is exercised by the browser tests): events reach the application at once,
// and an inbox item is acknowledged only once the application is done with it and with every
// one before it; if the application fails on one, nothing after it is acknowledged and the
// connection is renewed, so the server sends them again.
import assert from "node:assert/strict";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Client, type Event } from "../src/client.js";
import { decodeBody, encodeBody, type Frame } from "../src/protocol/index.js";

class StandInSocket {
  static made: StandInSocket[] = [];
  readyState = 0;
  binaryType = "blob";
  sent: Frame[] = [];
  onopen: (() => void) | null = null;
  onmessage: ((m: { data: ArrayBuffer }) => void) | null = null;
  onclose: ((e: { code: number; reason: string }) => void) | null = null;
  onerror: (() => void) | null = null;
  constructor(readonly url: string) { StandInSocket.made.push(this); }
  send(data: Uint8Array): void { this.sent.push(decodeBody(data, 1 << 20, 64)); }
  close(): void { this.readyState = 3; }
  open(): void { this.readyState = 1; this.onopen?.(); }
  receive(frame: Frame): void {
    const body = encodeBody(frame);
    this.onmessage?.({ data: body.buffer.slice(body.byteOffset, body.byteOffset + body.length) as ArrayBuffer });
  }
  acks(): number[] { return this.sent.flatMap((f) => (f.type === "Ack" ? [f.upto] : [])); }
}

const welcome = (cursor: number): Frame => ({ type: "Welcome", version: 1, user: "bob", device: "web",
  session: "s", serverTime: 0, heartbeatMs: 30000, maxFrame: 1 << 20, cursor });
const deliver = (q: number): Frame => ({ type: "Deliver", q, conv: "d:alice:bob", seq: q, ts: 1,
  sender: "alice", device: "d", id: `a-${q}` });

function start(onEvent: (e: Event) => void | Promise<void>): { client: Client; ws: StandInSocket } {
  StandInSocket.made = [];
  const client = new Client({ url: "ws://x/ws", token: "t", device: "web", onEvent,
    WebSocket: StandInSocket as unknown as typeof WebSocket });
  client.start();
  const ws = StandInSocket.made[0]!;
  ws.open();
  ws.receive(welcome(0));
  return { client, ws };
}

test("items are acknowledged in order, once the application is done with each", async () => {
  const release = new Map<number, () => void>();
  const seen: number[] = [];
  const { client, ws } = start((e) => {
    if (e.kind !== "message") return;
    seen.push(e.q);
    return new Promise<void>((resolve) => release.set(e.q, resolve));
  });
  for (const q of [1, 2, 3]) ws.receive(deliver(q));
  await sleep(5);
  assert.deepEqual(seen, [1, 2, 3]); // handed over at once
  release.get(2)!(); // done with 2, not with 1: nothing may be acknowledged
  await sleep(60);
  assert.deepEqual(ws.acks(), []);
  release.get(1)!();
  await sleep(60);
  assert.deepEqual(ws.acks(), [2]);
  release.get(3)!();
  await sleep(60);
  assert.deepEqual(ws.acks(), [2, 3]);
  client.close();
});

test("a failure stops acknowledgements and renews the connection; the items come again", async () => {
  let failOnce = true;
  const taken: number[] = [];
  const { client, ws } = start((e) => {
    if (e.kind !== "message") return;
    if (e.q === 2 && failOnce) {
      failOnce = false;
      throw new Error("disk full");
    }
    taken.push(e.q);
  });
  const error = console.error;
  console.error = () => {};
  try {
    for (const q of [1, 2, 3]) ws.receive(deliver(q));
    await sleep(60);
  } finally {
    console.error = error;
  }
  assert.ok(ws.acks().every((q) => q <= 1), `acknowledged past the failure: ${ws.acks()}`);
  await sleep(200); // the client reconnects (backoff)
  const again = StandInSocket.made[1];
  assert.ok(again, "no new connection");
  again.open();
  assert.equal(again.sent[0]?.type, "Hello");
  again.receive(welcome(1));
  for (const q of [2, 3]) again.receive(deliver(q)); // the server sends them again
  await sleep(60);
  assert.deepEqual(taken, [1, 2, 3]); // (3 was not handed over: the connection was ending)
  assert.deepEqual(again.acks().at(-1), 3);
  client.close();
});

test("a send not yet SENT goes again on the next connection, under the same id", async () => {
  const { client, ws } = start(() => {});
  const sent = client.send({ user: "alice" }, new TextEncoder().encode("hi"), "c-1");
  assert.equal(ws.sent.filter((f) => f.type === "Send").length, 1);
  ws.onclose?.({ code: 1006, reason: "gone" });
  await sleep(200);
  const again = StandInSocket.made[1]!;
  again.open();
  again.receive(welcome(0));
  const resent = again.sent.filter((f) => f.type === "Send");
  assert.deepEqual(resent.map((f) => f.type === "Send" && f.id), ["c-1"]);
  again.receive({ type: "Sent", id: "c-1", conv: "d:alice:bob", seq: 1, ts: 5 });
  assert.equal((await sent).seq, 1);
  client.close();
});
