// The app's pure helpers: what a token names, and how last seen reads.
import assert from "node:assert/strict";
import { test } from "node:test";
import { encode } from "@msgpack/msgpack";
import { lastSeenText } from "../src/dom.js";
import { readToken } from "../src/storage.js";

const b64url = (b: Uint8Array) => Buffer.from(b).toString("base64").replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");

test("a token names its user, and its device when it is bound to one", () => {
  // as chatd.auth.make_token: base64url(msgpack [1, user, device, exp]) "." base64url(hmac)
  const free = `${b64url(encode([1, "alice", null, 1900000000]))}.c2ln`;
  assert.deepEqual(readToken(free), { token: free, user: "alice", device: null });
  const bound = `${b64url(encode([1, "bob", "phone", 1900000000]))}.c2ln`;
  assert.equal(readToken(bound)?.device, "phone");
  for (const bad of ["", "x", "!!!.y", `${b64url(encode([2, "a", null, 1]))}.s`, `${b64url(encode({ u: "a" }))}.s`]) {
    assert.equal(readToken(bad), null, bad);
  }
});

test("last seen reads like WhatsApp's", () => {
  const now = new Date(2026, 11, 2, 15, 0).getTime();
  assert.equal(lastSeenText(true, null, now), "online");
  assert.equal(lastSeenText(false, null, now), "");
  assert.equal(lastSeenText(false, new Date(2026, 11, 2, 14, 2).getTime(), now), "last seen today at 14:02");
  assert.equal(lastSeenText(false, new Date(2026, 11, 1, 9, 5).getTime(), now), "last seen yesterday at 09:05");
  assert.equal(lastSeenText(false, new Date(2026, 10, 20, 23, 59).getTime(), now), "last seen on 20 Nov at 23:59");
});
