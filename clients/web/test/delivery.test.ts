// The delivery rules without a socket: resend under the same ids after a reconnect, drop
// repeats by inbox position, acknowledge only what the application took.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Delivery } from "../src/delivery.js";
import type { Decoded, Frame, FrameOf } from "../src/protocol/index.js";

const welcome = (cursor: number): Decoded<"Welcome"> => ({ type: "Welcome", version: 1, user: "bob",
  device: "web", session: "s", serverTime: 0, heartbeatMs: 30000, maxFrame: 1 << 20, cursor, mediaUrl: "", server: "" });
const deliver = (q: number, seq: number): Frame => ({ type: "Deliver", q, conv: "d:alice:bob", seq, ts: 1,
  sender: "alice", device: "d", id: `a-${seq}`, body: new Uint8Array(), group: null, media: [], event: null });

test("sends not yet SENT go again after a reconnect, under the same ids, and only those", () => {
  const d = new Delivery();
  d.pending.set("x-1", { type: "Send", id: "x-1", to: "alice", body: new Uint8Array([1]) });
  d.pending.set("x-2", { type: "Send", id: "x-2", to: "alice", body: new Uint8Array([2]) });
  assert.deepEqual(d.welcomed(welcome(0)).map((f) => f.type === "Send" && f.id), ["x-1", "x-2"]);
  const out = d.received({ type: "Sent", id: "x-1", conv: "d:alice:bob", seq: 1, ts: 5 });
  assert.equal(out.events[0]?.kind, "sent");
  assert.deepEqual(d.welcomed(welcome(0)).map((f) => f.type === "Send" && f.id), ["x-2"]);
  // a repeated Sent (the first connection's answer, late) is no news
  assert.equal(d.received({ type: "Sent", id: "x-1", conv: "d:alice:bob", seq: 1, ts: 5 }).events.length, 0);
});

test("repeats by inbox position are dropped", () => {
  const d = new Delivery();
  d.welcomed(welcome(0));
  const seqs = [1, 2, 2, 1, 3].map((q) => d.received(deliver(q, q)).events.map((e) => "seq" in e && e.seq));
  assert.deepEqual(seqs, [[1], [2], [], [], [3]]);
});

test("only what the application took is acknowledged, cumulatively", () => {
  const d = new Delivery();
  d.welcomed(welcome(4));
  for (const q of [5, 6, 7]) d.received(deliver(q, q));
  assert.equal(d.ack(), null); // nothing taken yet
  d.take(5);
  assert.deepEqual(d.ack(), { type: "Ack", upto: 5 });
  assert.equal(d.ack(), null);
  d.take(7);
  // the connection ends before the Ack goes: the next one sends it first
  const first = d.welcomed(welcome(5))[0];
  assert.deepEqual(first, { type: "Ack", upto: 7 });
});

test("a rate-limited send is retried under its id; a refused one settles with the error", () => {
  const d = new Delivery();
  d.pending.set("x-1", { type: "Send", id: "x-1", to: "alice" });
  d.pending.set("x-2", { type: "Send", id: "x-2", to: "nobody" });
  const slow = d.received({ type: "Error", code: 7, message: "slow down", ref: "x-1", rid: null, retryMs: 250 });
  assert.deepEqual(slow.retry, { id: "x-1", ms: 250 });
  assert.ok(d.pending.has("x-1"));
  const refused = d.received({ type: "Error", code: 5, message: "no such user", ref: "x-2", rid: null, retryMs: null });
  assert.equal(refused.settled[0]?.error?.code, 5);
  assert.ok(!d.pending.has("x-2"));
  const fatal = d.received({ type: "Error", code: 3, message: "bad token", ref: null, rid: null, retryMs: null });
  assert.equal(fatal.events[0]?.kind, "error");
  assert.ok(fatal.stop);
});

test("a send the server failed (INTERNAL with retryMs) is written again, with backoff, for a while", () => {
  const d = new Delivery();
  d.pending.set("x-1", { type: "Send", id: "x-1", to: "alice" });
  const failed = (now: number) => d.received({ type: "Error", code: 10,
    message: "node n2, the owner, did not answer within 2 s: send it again", ref: "x-1", rid: null, retryMs: 500 }, now);
  assert.deepEqual([0, 600, 1700, 3800, 8000, 14000].map((t) => failed(t).retry?.ms), [500, 1000, 2000, 4000, 5000, 5000]);
  assert.ok(d.pending.has("x-1"));
  const last = failed(60_000); // a minute after its first failure: refused for good
  assert.equal(last.retry, undefined);
  assert.equal(last.settled[0]?.error?.code, 10);
  assert.equal(last.events[0]?.kind, "error");
  assert.ok(!d.pending.has("x-1"));
  // a Sent after a retry ends it; the next failure of that id would start afresh
  d.pending.set("x-3", { type: "Send", id: "x-3", to: "alice" });
  d.received({ type: "Error", code: 10, message: "m", ref: "x-3", rid: null, retryMs: 500 }, 0);
  assert.equal(d.received({ type: "Sent", id: "x-3", conv: "d:alice:bob", seq: 1, ts: 5 }).events[0]?.kind, "sent");
  assert.ok(!d.failing.has("x-3"));
});

test("a chat's sends are written again in the order they were made, whatever each one's backoff", () => {
  const d = new Delivery();
  const send = (id: string, to: string) => ({ type: "Send", id, to, group: null }) as FrameOf<"Send">;
  const fail = (id: string) => d.received({ type: "Error", code: 10, message: "m", ref: id, rid: null, retryMs: 500 }, 0);
  d.pending.set("x-1", send("x-1", "alice"));
  fail("x-1"); fail("x-1"); fail("x-1"); // its next try in 2 s
  assert.ok(d.heldBack(send("x-2", "alice"))); // a later send of its chat waits with it
  assert.ok(!d.heldBack(send("x-3", "carol"))); // another chat's does not
  d.pending.set("x-2", send("x-2", "alice"));
  d.held.add("x-2");
  d.pending.set("x-3", send("x-3", "carol"));
  assert.deepEqual(d.again().map((f) => (f as FrameOf<"Send">).id), ["x-1", "x-2"]);
  assert.equal(d.held.size, 0);
  assert.ok(!d.heldBack(send("x-4", "alice")));
  // a failure of a later one first: still both, in order
  fail("x-2"); fail("x-1");
  assert.deepEqual(d.again().map((f) => (f as FrameOf<"Send">).id), ["x-1", "x-2"]);
  fail("x-1");
  assert.equal(d.received({ type: "Sent", id: "x-1", conv: "d:alice:bob", seq: 1, ts: 5 }).events[0]?.kind, "sent");
  assert.equal(d.held.size, 0);
});

test("a send names its chat's latest send not SENT yet (after); one given up on is named no more", () => {
  const d = new Delivery();
  const send = (id: string, to: string | null, group: string | null = null) =>
    ({ type: "Send", id, to, group }) as FrameOf<"Send">;
  const sends = [send("x-1", "alice"), send("x-2", "alice"), send("x-3", "carol"), send("x-4", null, "g1"),
    send("x-5", "alice")];
  for (const f of sends) d.add(f);
  assert.deepEqual(sends.map((f) => f.after), [null, "x-1", null, null, "x-2"]);
  d.received({ type: "Sent", id: "x-5", conv: "d:alice:bob", seq: 1, ts: 5 });
  const after5 = send("x-6", "alice");
  d.add(after5);
  assert.equal(after5.after, "x-2"); // (x-5, the latest, is SENT: x-2 is not yet)
  // x-1 refused for good: x-2, which named it, now names what x-1 named (nothing)
  d.received({ type: "Error", code: 6, message: "too large", ref: "x-1", rid: null, retryMs: null }, 0);
  assert.equal(sends[1]!.after, null);
  d.received({ type: "Sent", id: "x-2", conv: "d:alice:bob", seq: 2, ts: 5 });
  d.received({ type: "Sent", id: "x-6", conv: "d:alice:bob", seq: 3, ts: 5 });
  const last = send("x-7", "alice");
  d.add(last);
  assert.equal(last.after, null);
});

test("requests are answered by rid and sent again after a reconnect", () => {
  const d = new Delivery();
  d.requests.set(3, { type: "GroupList", rid: 3 });
  assert.deepEqual(d.welcomed(welcome(0)), [{ type: "GroupList", rid: 3 }]);
  const out = d.received({ type: "Groups", rid: 3, groups: ["g1"] });
  assert.equal(out.settled[0]?.rid, 3);
  assert.deepEqual(d.welcomed(welcome(0)), []);
});
