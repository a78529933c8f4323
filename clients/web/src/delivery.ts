// The delivery rules of a chatd device, without I/O (the Python SDK's, clients/chatd_client):
//  - every send carries a client id; until its Sent arrives it is pending, and a new
//    connection sends it again under the same id (the server stores it once);
//  - inbox items (Deliver, Receipt) come at least once: an item whose position q is not
//    above the highest seen is a repeat and dropped;
//  - the device acknowledges cumulatively, and only up to what the application has taken
//    (take(q)), so whatever it had not taken comes again on the next connection.
// The Client (client.ts) feeds it frames and writes what it returns.

import type { ChatEvent, Decoded, Frame, FrameOf, Media } from "./protocol/index.js";
import { codeName, ErrorCode, Status } from "./protocol/index.js";

export type Event =
  | { kind: "connected"; user: string; device: string; session: string; mediaUrl: string }
  | { kind: "disconnected"; reason: string }
  | { kind: "message"; q: number; conv: string; seq: number; ts: number; sender: string;
      device: string; id: string; body: Uint8Array; group: string | null; media: Media[];
      event: ChatEvent | null }
  | { kind: "delivered" | "read"; q: number; conv: string; seqs: number[]; by: string; ts: number;
      all: boolean }
  | { kind: "presence"; user: string; online: boolean; lastSeen: number | null }
  | { kind: "synced"; upto: number }
  | { kind: "sent"; id: string; conv: string; seq: number; ts: number }
  | { kind: "error"; code: number; name: string; message: string; ref: string | null; fatal: boolean };

/** The server refused something: `code` is an ErrorCode. */
export class ChatdError extends Error {
  constructor(readonly code: number, readonly detail: string) {
    super(`${codeName(code)}: ${detail}`);
    this.name = "ChatdError";
  }
}

export const FATAL_CODES: ReadonlySet<number> = new Set([
  ErrorCode.UNAUTHENTICATED, ErrorCode.UNSUPPORTED_VERSION, ErrorCode.MALFORMED]);

/** What one received frame asks for: events for the application, frames to write, answers. */
export interface Outcome {
  events: Event[];
  write: Frame[];
  /** a send refused for good (its client id), or a request's answer or refusal (its rid) */
  settled: Array<{ id?: string; rid?: number; frame?: Frame; error?: ChatdError }>;
  /** a send to write again after this many ms, under its id (RATE_LIMITED, or INTERNAL with
   *  retryMs: the server's store did not take it, e.g. the chat's owner did not answer) */
  retry?: { id: string; ms: number };
  /** the server said the connection is over and not to come back (Goodbye, fatal Error) */
  stop?: string;
}

export class Delivery {
  readonly pending = new Map<string, FrameOf<"Send">>(); // not yet SENT, in send order
  readonly requests = new Map<number, Frame>(); // requests awaiting an answer, by rid
  readonly watching = new Set<string>();
  /** sends the server failed (INTERNAL with retryMs): since when, and how often sent again */
  readonly failing = new Map<string, { since: number; tries: number }>();
  /** sends waiting to be written again (after a retry delay): see again() */
  readonly held = new Set<string>();
  private readonly lastSend = new Map<string, string>(); // chat -> id of its latest send
  sendRetryForMs = 60_000; // such a send is written again for this long, then refused
  maxRetryMs = 5_000; // its delay doubles from the server's retryMs up to this
  maxQ = 0; // highest inbox position handed to the application: at or below is a repeat
  taken = 0; // highest position the application has taken
  acked = 0; // highest position the server has (Welcome's cursor, then our Acks)

  /** A new connection was welcomed: what to write first (the Ack of what was taken since,
   *  the sends not yet SENT, the requests not yet answered, the presence watch list). */
  welcomed(w: Decoded<"Welcome">): Frame[] {
    this.acked = w.cursor;
    const out: Frame[] = [];
    const ack = this.ack();
    if (ack) out.push(ack);
    out.push(...this.pending.values(), ...this.requests.values());
    this.held.clear();
    if (this.watching.size) out.push({ type: "PresenceSubscribe", users: [...this.watching] });
    return out;
  }

  /** The application has taken the item at q (and, cumulatively, all before it). */
  take(q: number): void {
    if (q > this.taken) this.taken = q;
  }

  /** An Ack to write now, if the application took more than the server knows. */
  ack(): FrameOf<"Ack"> | null {
    if (this.taken <= this.acked) return null;
    this.acked = this.taken;
    return { type: "Ack", upto: this.taken };
  }

  received(frame: Frame, now = Date.now()): Outcome {
    const out: Outcome = { events: [], write: [], settled: [] };
    switch (frame.type) {
      case "Deliver": {
        const d = frame as Decoded<"Deliver">;
        if (d.q > this.maxQ) {
          this.maxQ = d.q;
          out.events.push({ kind: "message", q: d.q, conv: d.conv, seq: d.seq, ts: d.ts, sender: d.sender,
            device: d.device, id: d.id, body: d.body, group: d.group, media: d.media, event: d.event });
        }
        break;
      }
      case "Receipt": {
        const r = frame as Decoded<"Receipt">;
        if (r.q > this.maxQ) {
          this.maxQ = r.q;
          out.events.push({ kind: r.status === Status.DELIVERED ? "delivered" : "read", q: r.q,
            conv: r.conv, seqs: r.seqs, by: r.by, ts: r.ts, all: r.all });
        }
        break;
      }
      case "Sent":
        this.failing.delete(frame.id);
        this.held.delete(frame.id);
        if (this.settle(frame.id)) {
          out.events.push({ kind: "sent", id: frame.id, conv: frame.conv, seq: frame.seq, ts: frame.ts });
          out.settled.push({ id: frame.id, frame });
        }
        break;
      case "Presence":
        if (frame.rid === null || frame.rid === undefined) {
          out.events.push({ kind: "presence", user: frame.user, online: frame.online,
            lastSeen: frame.lastSeen ?? null });
        } else this.answer(frame.rid, frame, out);
        break;
      case "Synced":
        out.events.push({ kind: "synced", upto: frame.upto });
        break;
      case "Ping":
        out.write.push({ type: "Pong", nonce: frame.nonce ?? 0 });
        break;
      case "Error":
        this.error(frame as Decoded<"Error">, out, now);
        break;
      case "Goodbye":
        out.stop = `the server said goodbye: ${frame.reason || "no reason given"}`;
        break;
      default:
        if ("rid" in frame && typeof frame.rid === "number") this.answer(frame.rid, frame, out);
    }
    return out;
  }

  /** A new send, pending until its Sent. It names (`after`) the chat's latest send not Sent
   *  yet: should that one fail, the server refuses this one too, and both go again in the
   *  order they were made (docs/PROTOCOL.md, "A chat's sends keep their order"). */
  add(frame: FrameOf<"Send">): void {
    const chat = chatKey(frame);
    const before = this.lastSend.get(chat);
    frame.after = before !== undefined && this.pending.has(before) ? before : null;
    this.lastSend.set(chat, frame.id);
    this.pending.set(frame.id, frame);
  }

  /** Whether an earlier send of the same chat waits to be written again: a new one then
   *  waits with it (held), so that the server numbers a device's sends to a chat in the
   *  order they were made. */
  heldBack(frame: FrameOf<"Send">): boolean {
    for (const id of this.held) {
      const f = this.pending.get(id);
      if (f && (f.to ?? null) === (frame.to ?? null) && (f.group ?? null) === (frame.group ?? null)) return true;
    }
    return false;
  }

  /** The held sends to write now (a retry delay ended), all of them, in the order they were
   *  made: with a backoff each, a send that failed more often used to go after later ones. */
  again(): Frame[] {
    const out = [...this.pending.values()].filter((f) => this.held.has(f.id));
    this.held.clear();
    return out;
  }

  private settle(id: string): FrameOf<"Send"> | undefined {
    const frame = this.pending.get(id);
    if (frame === undefined) return undefined;
    this.pending.delete(id);
    const chat = chatKey(frame);
    if (this.lastSend.get(chat) === id) { // the latest left of that chat, if any, is now
      this.lastSend.delete(chat);
      for (const f of this.pending.values()) if (chatKey(f) === chat) this.lastSend.set(chat, f.id);
    }
    return frame;
  }

  private answer(rid: number, frame: Frame, out: Outcome): void {
    if (this.requests.delete(rid)) out.settled.push({ rid, frame });
  }

  /** The delay before a refused send is written again, or null: it failed for good. As the
   *  Python SDK: RATE_LIMITED always; INTERNAL with retryMs for sendRetryForMs. */
  private retryDelay(e: Decoded<"Error">, id: string, now: number): number | null {
    if (e.code === ErrorCode.RATE_LIMITED) return e.retryMs ?? 100;
    if (e.code !== ErrorCode.INTERNAL || e.retryMs === null || e.retryMs === undefined) return null;
    let f = this.failing.get(id);
    if (f === undefined) this.failing.set(id, f = { since: now, tries: 0 });
    else if (now - f.since >= this.sendRetryForMs) return null;
    f.tries += 1;
    return Math.max(e.retryMs, Math.min(this.maxRetryMs, e.retryMs * 2 ** (f.tries - 1)));
  }

  private error(e: Decoded<"Error">, out: Outcome, now: number): void {
    const error = new ChatdError(e.code, e.message);
    if (e.ref !== null && this.pending.has(e.ref)) {
      const ms = this.retryDelay(e, e.ref, now);
      if (ms !== null) {
        out.retry = { id: e.ref, ms }; // again later, under the same id
        this.held.add(e.ref);
      } else {
        this.failing.delete(e.ref);
        this.held.delete(e.ref);
        const gone = this.settle(e.ref)!;
        for (const f of this.pending.values()) { // (never sent again: they follow what it followed)
          if (f.after === gone.id) f.after = gone.after ?? null;
        }
        out.settled.push({ id: e.ref, error });
        out.events.push({ kind: "error", code: e.code, name: codeName(e.code), message: e.message,
          ref: e.ref, fatal: false });
      }
      return;
    }
    if (e.rid !== null && this.requests.delete(e.rid)) {
      out.settled.push({ rid: e.rid, error });
      return;
    }
    const fatal = FATAL_CODES.has(e.code);
    out.events.push({ kind: "error", code: e.code, name: codeName(e.code), message: e.message,
      ref: e.ref, fatal });
    if (fatal) out.stop = error.message;
  }
}

function chatKey(frame: FrameOf<"Send">): string {
  return frame.group ? `g:${frame.group}` : `u:${frame.to ?? ""}`;
}
