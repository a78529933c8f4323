// A chatd device over WebSocket: connects, keeps reconnecting with backoff, sends heartbeats,
// and applies the delivery rules of delivery.ts. Events go to `onEvent` one at a time, in
// order; an inbox item counts as taken (and is acknowledged) once onEvent's promise resolves,
// so what the application had not finished with comes again after a reconnect.

import { ChatdError, Delivery, type Event, type Outcome } from "./delivery.js";
import {
  Connection, type Decoded, type Frame, type FrameOf, type Media, NEED_DATA, PEER_CLOSED, PROTOCOL_VERSION,
  ProtocolError,
} from "./protocol/index.js";

export { ChatdError, type Event } from "./delivery.js";

export interface ClientOptions {
  url: string; // ws://host:port/ws
  token: string;
  device: string;
  onEvent: (event: Event) => void | Promise<void>;
  clientName?: string;
  maxBackoffMs?: number;
  WebSocket?: typeof WebSocket;
}

interface Waiter {
  resolve: (frame: Frame) => void;
  reject: (error: Error) => void;
}

export class Client {
  readonly delivery = new Delivery();
  user = "";
  mediaUrl = "";
  connected = false;
  stopped: string | null = null; // why the client stopped for good
  private ws: WebSocket | null = null;
  private conn: Connection | null = null;
  private nextRid = 1;
  private nextId = 1;
  private readonly idPrefix = Array.from(crypto.getRandomValues(new Uint8Array(4)),
    (b) => b.toString(16).padStart(2, "0")).join("");
  private waiters = new Map<string | number, Waiter>();
  private queue: Promise<void> = Promise.resolve();
  private backoff = 50;
  private heartbeatMs = 30000;
  private timers: ReturnType<typeof setTimeout>[] = [];
  private lastHeard = 0;
  private ackTimer: ReturnType<typeof setTimeout> | null = null;
  private epoch = 0; // events handed over in an earlier epoch are not taken
  private failedEpoch = -1;

  constructor(private readonly opts: ClientOptions) {}

  start(): void {
    this.stopped = null;
    this.connect();
  }

  /** Say goodbye (after acknowledging what was taken) and stop reconnecting. */
  close(reason = "closed"): void {
    if (this.conn && this.ws && this.conn.state !== "closed") {
      this.flushAck();
      this.write({ type: "Goodbye" });
    }
    this.halt(reason);
  }

  newId(): string {
    return `${this.idPrefix}-${Date.now().toString(36)}-${this.nextId++}`;
  }

  /** Send a message (to a user, or to a group); resolves once the server stored it (SENT).
   *  `id` lets a caller resend something from an earlier run (an outbox) under its own id. */
  send(to: { user?: string; group?: string }, body: Uint8Array, id = this.newId(),
       media: Media[] = []): Promise<FrameOf<"Sent">> {
    const frame: FrameOf<"Send"> = { type: "Send", id, to: to.user ?? null, group: to.group ?? null, body, media };
    this.delivery.add(frame);
    const answer = this.wait(id) as Promise<FrameOf<"Sent">>;
    if (this.delivery.heldBack(frame)) this.delivery.held.add(id); // (after the earlier ones)
    else if (this.connected) this.write(frame);
    return answer;
  }

  /** Send a request built from a fresh rid; resolves with its answer (rejects with ChatdError). */
  request<F extends Frame>(make: (rid: number) => Frame): Promise<F> {
    const rid = this.nextRid++;
    const frame = make(rid);
    this.delivery.requests.set(rid, frame);
    const answer = this.wait(rid) as Promise<F>;
    if (this.connected) this.write(frame);
    return answer;
  }

  markRead(conv: string, upto: number): void {
    if (this.connected) this.write({ type: "Read", conv, upto });
  }

  watch(users: string[]): void {
    const fresh = users.filter((u) => !this.delivery.watching.has(u));
    fresh.forEach((u) => this.delivery.watching.add(u));
    if (fresh.length && this.connected) this.write({ type: "PresenceSubscribe", users: fresh });
  }

  // ---- internals ------------------------------------------------------------------------------

  private wait(key: string | number): Promise<Frame> {
    return new Promise((resolve, reject) => this.waiters.set(key, { resolve, reject }));
  }

  private connect(): void {
    if (this.stopped !== null) return;
    const WS = this.opts.WebSocket ?? WebSocket;
    let ws: WebSocket;
    try {
      ws = new WS(this.opts.url);
    } catch (exc) {
      this.halt(`cannot open ${this.opts.url}: ${(exc as Error).message}`);
      return;
    }
    ws.binaryType = "arraybuffer";
    const conn = new Connection("client", "message");
    this.ws = ws;
    this.conn = conn;
    ws.onopen = () => {
      this.write({ type: "Hello", version: PROTOCOL_VERSION, token: this.opts.token,
        device: this.opts.device, client: this.opts.clientName ?? "chatd-web/0.1" });
      this.lastHeard = Date.now();
      this.every(5000, () => this.checkAlive());
    };
    ws.onmessage = (msg) => {
      if (ws !== this.ws) return;
      this.lastHeard = Date.now();
      if (!(msg.data instanceof ArrayBuffer)) {
        this.fail(new ProtocolError(1, "the server sent a text message"));
        return;
      }
      conn.receiveData(new Uint8Array(msg.data));
      try {
        for (let e = conn.nextEvent(); e !== NEED_DATA && e !== PEER_CLOSED; e = conn.nextEvent()) {
          this.onFrame(e as Frame);
          if (ws !== this.ws) return;
        }
      } catch (exc) {
        this.fail(exc as Error);
      }
    };
    ws.onclose = (e) => {
      if (ws === this.ws) this.lost(e.reason || `connection closed (${e.code})`);
    };
    ws.onerror = () => {}; // (onclose follows, with what can be told)
  }

  private onFrame(frame: Frame): void {
    if (frame.type === "Welcome") {
      const w = frame as Decoded<"Welcome">;
      this.user = w.user;
      this.mediaUrl = w.mediaUrl;
      this.heartbeatMs = w.heartbeatMs || 30000;
      this.connected = true;
      this.backoff = 50;
      this.emit({ kind: "connected", user: w.user, device: w.device, session: w.session, mediaUrl: w.mediaUrl });
      for (const f of this.delivery.welcomed(w)) this.write(f);
      let n = 0;
      this.every(this.heartbeatMs, () => this.write({ type: "Ping", nonce: n++ }));
      return;
    }
    const out: Outcome = this.delivery.received(frame);
    for (const f of out.write) this.write(f);
    for (const s of out.settled) {
      const key = s.id ?? s.rid!;
      const w = this.waiters.get(key);
      this.waiters.delete(key);
      if (s.error) w?.reject(s.error);
      else if (s.frame) w?.resolve(s.frame);
    }
    if (out.retry) {
      this.timers.push(setTimeout(() => {
        if (this.connected) for (const f of this.delivery.again()) this.write(f);
      }, out.retry.ms)); // (not connected: the next Welcome writes every pending send)
    }
    for (const e of out.events) this.emit(e);
    if (out.stop !== undefined) this.halt(out.stop);
  }

  /** Hand the event to the application at once (in order), and take it once the application
   *  is done with it and with every event before it (the application may work on several at
   *  a time, e.g. store them in one transaction). If it fails on one, nothing after it is
   *  taken either: the connection is renewed and the server sends them again. */
  private emit(event: Event): void {
    let done: Promise<boolean>;
    try {
      done = Promise.resolve(this.opts.onEvent(event)).then(() => true, (exc) => this.appFailed(event, exc));
    } catch (exc) {
      done = Promise.resolve(this.appFailed(event, exc));
    }
    const epoch = this.epoch;
    this.queue = this.queue.then(() => done).then((ok) => {
      if (ok && "q" in event && epoch === this.epoch) {
        this.delivery.take(event.q);
        this.scheduleAck();
      }
    });
  }

  private appFailed(event: Event, exc: unknown): boolean {
    console.error("chatd: the application failed on an event", event, exc);
    if (this.epoch === this.failedEpoch) return false;
    this.failedEpoch = this.epoch;
    this.epoch += 1; // nothing handed over before this is taken any more
    this.delivery.maxQ = this.delivery.taken; // what was not taken is no repeat: it comes again
    if (this.connected) this.lost("the application failed on an event: renewing the connection");
    return false;
  }

  private scheduleAck(): void {
    if (this.ackTimer === null) {
      this.ackTimer = setTimeout(() => {
        this.ackTimer = null;
        this.flushAck();
      }, 20);
    }
  }

  private flushAck(): void {
    if (!this.connected) return;
    const ack = this.delivery.ack();
    if (ack) this.write(ack);
  }

  private write(frame: Frame): void {
    const ws = this.ws;
    const conn = this.conn;
    if (!ws || !conn || ws.readyState !== 1 || conn.state === "closed" && frame.type !== "Goodbye") return;
    if (frame.type === "Read" || frame.type === "Goodbye") {
      // an Ack goes first, so that what is read is also delivered
      const ack = this.delivery.ack();
      if (ack) ws.send(conn.send(ack) as Uint8Array<ArrayBuffer>);
    }
    ws.send(conn.send(frame) as Uint8Array<ArrayBuffer>);
  }

  private checkAlive(): void {
    if (this.connected && Date.now() - this.lastHeard > 2 * this.heartbeatMs + 5000) {
      this.lost("no answer from the server");
    }
  }

  private every(ms: number, fn: () => void): void {
    this.timers.push(setInterval(fn, ms));
  }

  private clearTimers(): void {
    this.timers.forEach((t) => { clearTimeout(t); clearInterval(t); });
    this.timers = [];
  }

  private fail(exc: Error): void {
    if (exc instanceof ProtocolError) {
      // the server broke the protocol (or this client did): say so, and stop
      this.emit({ kind: "error", code: exc.code, name: "PROTOCOL", message: exc.message, ref: null, fatal: true });
      this.halt(`protocol error: ${exc.message}`);
    } else {
      throw exc;
    }
  }

  private drop(): void {
    const ws = this.ws;
    this.ws = this.conn = null;
    this.clearTimers();
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      if (ws.readyState <= 1) ws.close(1000);
    }
  }

  private lost(reason: string): void {
    this.drop();
    if (this.connected) {
      this.connected = false;
      this.emit({ kind: "disconnected", reason });
    }
    if (this.stopped !== null) return;
    const delay = this.backoff * (0.5 + Math.random());
    this.backoff = Math.min(this.opts.maxBackoffMs ?? 5000, this.backoff * 2);
    this.timers.push(setTimeout(() => this.connect(), delay));
  }

  private halt(reason: string): void {
    this.stopped = reason;
    this.drop();
    if (this.connected) {
      this.connected = false;
      this.emit({ kind: "disconnected", reason });
    }
    for (const [, w] of this.waiters) w.reject(new ChatdError(0, reason));
    this.waiters.clear();
  }
}
