// What the app keeps in the browser: the token in sessionStorage (gone with the tab), this
// browser's device name in localStorage, and per user in IndexedDB the chats, the messages
// taken from the server, and the outbox (messages typed but not yet SENT).

import { decode } from "@msgpack/msgpack";
import type { Media } from "./protocol/index.js";

const TOKEN = "chatd.token";
const DEVICE = "chatd.device";

export interface TokenInfo { token: string; user: string; device: string | null }

/** The user (and device, if bound) a token names: its first part is msgpack [1, user, device, exp]. */
export function readToken(token: string): TokenInfo | null {
  try {
    const b64 = token.split(".")[0]!.replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0));
    const payload = decode(bytes) as unknown[];
    if (!Array.isArray(payload) || payload[0] !== 1 || typeof payload[1] !== "string") return null;
    return { token, user: payload[1], device: typeof payload[2] === "string" ? payload[2] : null };
  } catch {
    return null;
  }
}

/** A token from the sign-in link's fragment (#token=...), moved into sessionStorage and out
 *  of the address bar; else the one this tab signed in with. */
export function takeToken(): TokenInfo | null {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN, decodeURIComponent(m[1]!));
    history.replaceState(null, "", location.pathname + location.search);
  }
  const token = sessionStorage.getItem(TOKEN);
  return token ? readToken(token) : null;
}

export function saveToken(token: string): void {
  sessionStorage.setItem(TOKEN, token);
}

export function forgetToken(): void {
  sessionStorage.removeItem(TOKEN);
}

/** This browser's device name: one device per browser, as WhatsApp Web. */
export function deviceName(): string {
  let name = localStorage.getItem(DEVICE);
  if (!name) {
    name = "web-" + Array.from(crypto.getRandomValues(new Uint8Array(4)), (b) => b.toString(16).padStart(2, "0")).join("");
    localStorage.setItem(DEVICE, name);
  }
  return name;
}

export interface StoredMessage {
  conv: string; seq: number; ts: number; sender: string; id: string; text: string;
  event: Record<string, unknown> | null; status: number; // own messages: 1 sent, 2 delivered, 3 read
  media?: Media[];
}
export interface StoredChat {
  conv: string; title: string; lastTs: number; lastText: string; unread: number; readUpTo: number;
  group: string | null; left: boolean; mode: number; ttl: number;
}
export interface OutboxEntry {
  id: string; conv: string; to: string | null; group: string | null; text: string; ts: number; media?: Media[];
}

type StoreName = "chats" | "messages" | "outbox";
const BATCH_MS = 10;

export class LocalStore {
  private constructor(private readonly db: IDBDatabase) {}

  static open(user: string): Promise<LocalStore> {
    return new Promise((resolve, reject) => {
      const req = indexedDB.open(`chatd:${user}`, 1);
      req.onupgradeneeded = () => {
        const db = req.result;
        db.createObjectStore("chats", { keyPath: "conv" });
        db.createObjectStore("messages", { keyPath: ["conv", "seq"] });
        db.createObjectStore("outbox", { keyPath: "id" });
      };
      req.onsuccess = () => resolve(new LocalStore(req.result));
      req.onerror = () => reject(req.error);
    });
  }

  all<T>(store: StoreName): Promise<T[]> {
    return this.wrap(this.db.transaction(store).objectStore(store).getAll()) as Promise<T[]>;
  }

  private batch: { puts: Array<[StoreName, unknown]>; deletes: Array<[StoreName, IDBValidKey]>;
    done: Promise<void> } | null = null;

  /** Write and delete; resolves once committed. Writes within BATCH_MS share one transaction
   *  (one per message took ~36 ms each in headless Chromium: a backlog crawled at ~30/s). */
  write(puts: Array<[StoreName, unknown]>, deletes: Array<[StoreName, IDBValidKey]> = []): Promise<void> {
    if (!puts.length && !deletes.length) return Promise.resolve();
    if (!this.batch) {
      const batch = { puts: [] as Array<[StoreName, unknown]>, deletes: [] as Array<[StoreName, IDBValidKey]>,
        done: Promise.resolve() };
      batch.done = new Promise<void>((resolve) => setTimeout(resolve, BATCH_MS)).then(() => {
        this.batch = null;
        return this.commit(batch.puts, batch.deletes);
      });
      this.batch = batch;
    }
    this.batch.puts.push(...puts);
    this.batch.deletes.push(...deletes);
    return this.batch.done;
  }

  private commit(puts: Array<[StoreName, unknown]>, deletes: Array<[StoreName, IDBValidKey]>): Promise<void> {
    const names = [...new Set([...puts, ...deletes].map(([s]) => s))];
    const tx = this.db.transaction(names, "readwrite", { durability: "relaxed" });
    for (const [s, v] of puts) tx.objectStore(s).put(v);
    for (const [s, k] of deletes) tx.objectStore(s).delete(k);
    return new Promise((resolve, reject) => {
      tx.oncomplete = () => resolve();
      tx.onerror = tx.onabort = () => reject(tx.error);
    });
  }

  private wrap(req: IDBRequest): Promise<unknown> {
    return new Promise((resolve, reject) => {
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }
}
