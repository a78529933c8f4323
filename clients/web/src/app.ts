// chatd's web app: sign in, chat list, conversations, groups, presence. Plain DOM; every
// user-given string is rendered as text (dom.ts). The Client (client.ts) speaks the protocol;
// this file keeps the app's state, stores what it takes in IndexedDB before the client
// acknowledges it, and draws.

import { Client, type Event } from "./client.js";
import { clear, clock, h, lastSeenText } from "./dom.js";
import { compress, fullUrl, previewUrl, sha256, upload } from "./media.js";
import { actionOf, codeName, type Decoded, type Frame, type Media, Mode } from "./protocol/index.js";
import {
  deviceName, forgetToken, LocalStore, type OutboxEntry, readToken, saveToken, type StoredChat,
  type StoredMessage, takeToken, type TokenInfo,
} from "./storage.js";

const SENT = 1, DELIVERED = 2, READ = 3;
const RENDER_MS = 40; // events within this are drawn together
const PRESS_HOLD_MS = 10_000; // drawing waits this long at most for the release of a press
const SHOWN = 200; // rows of a conversation drawn at first; scrolling up draws more
const ID = /^[A-Za-z0-9_.-]{1,64}$/;
const MODE_NAMES = ["temporary", "permanent", "disappearing"];
const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: false });

interface Group { name: string; members: string[]; admins: string[]; mode: number; ttl: number }

class App {
  client!: Client;
  store!: LocalStore;
  me = "";
  chats = new Map<string, StoredChat>();
  messages = new Map<string, Map<number, StoredMessage>>();
  outbox = new Map<string, OutboxEntry>();
  groups = new Map<string, Group>();
  presence = new Map<string, { online: boolean; lastSeen: number | null }>();
  open: string | null = null; // the conversation shown
  status = "connecting…";
  alert: { text: string; fatal: boolean } | null = null;
  historyMore = new Map<string, boolean>();
  paging = false;
  panel: "none" | "info" | "new-chat" | "new-group" = "none";
  readBy: { seq: number; text: string } | null = null;
  root = document.getElementById("app")!;
  token = "";
  device = "";
  renderTimer: ReturnType<typeof setTimeout> | null = null;
  renderCost = 0; // ms the last render took
  pressedAt: number | null = null; // a pointer is down since (see scheduleRender)
  shown = SHOWN; // rows of the open conversation drawn (the newest); more on scrolling up
  viewer: { url: string; alt: string } | null = null; // a full image shown over the app
  // the mode (and ttl) chosen in the info panel and not yet Set: kept when the app is drawn again
  modeDraft: { conv: string; mode: number; ttl: number } | null = null;
  // receipts for my messages whose Sent has not come yet ("conv seq" -> status): with several
  // nodes a send is numbered by its chat's owner, and its DELIVERED can overtake its Sent
  early = new Map<string, number>();

  async start(info: TokenInfo, wsUrl: string): Promise<void> {
    this.me = info.user;
    this.token = info.token;
    this.store = await LocalStore.open(info.user);
    for (const c of await this.store.all<StoredChat>("chats")) this.chats.set(c.conv, c);
    for (const m of await this.store.all<StoredMessage>("messages")) this.msgs(m.conv).set(m.seq, m);
    for (const o of await this.store.all<OutboxEntry>("outbox")) this.outbox.set(o.id, o);
    this.device = info.device ?? deviceName();
    this.client = new Client({ url: wsUrl, token: info.token, device: this.device,
      onEvent: (e) => this.onEvent(e) });
    this.client.start();
    for (const o of [...this.outbox.values()].sort((a, b) => a.ts - b.ts)) this.dispatch(o);
    window.addEventListener("hashchange", () => this.route());
    document.addEventListener("pointerdown", () => { this.pressedAt = performance.now(); }, true);
    for (const end of ["pointerup", "pointercancel"]) {
      document.addEventListener(end, () => { this.pressedAt = null; }, true);
    }
    window.addEventListener("blur", () => { this.pressedAt = null; }); // released elsewhere
    window.addEventListener("pagehide", () => this.client.close("page closed"));
    document.addEventListener("visibilitychange", () => this.markRead());
    document.addEventListener("keydown", (ev) => { // Escape: close what is open, then the chat
      if (ev.key !== "Escape" || this.viewer) return;
      if (this.panel !== "none" || this.readBy) {
        this.panel = "none";
        this.readBy = null;
        this.render();
      } else if (this.open) {
        location.hash = "#";
      }
    });
    this.route();
  }

  msgs(conv: string): Map<number, StoredMessage> {
    let m = this.messages.get(conv);
    if (!m) this.messages.set(conv, (m = new Map()));
    return m;
  }

  chat(conv: string): StoredChat {
    let c = this.chats.get(conv);
    if (!c) {
      const group = conv.startsWith("g:") ? conv.slice(2) : null;
      c = { conv, title: group ? (this.groups.get(group)?.name ?? group) : this.peer(conv), lastTs: 0,
        lastText: "", unread: 0, readUpTo: 0, group, left: false, mode: 0, ttl: 0 };
      this.chats.set(conv, c);
    }
    return c;
  }

  peer(conv: string): string {
    const [, a, b] = conv.split(":");
    return a === this.me ? b! : a!;
  }

  directConv(user: string): string {
    return `d:${[this.me, user].sort().join(":")}`;
  }

  // ---- events from the server ---------------------------------------------------------------

  async onEvent(e: Event): Promise<void> {
    switch (e.kind) {
      case "connected":
        this.status = "";
        this.alert = this.alert?.fatal ? this.alert : null;
        this.refreshGroups();
        break;
      case "disconnected":
        this.status = this.client.stopped ? "signed out" : "offline: reconnecting…";
        if (this.client.stopped && !this.alert) this.alert = { text: e.reason, fatal: true };
        break;
      case "message":
        await this.onMessage(e);
        break;
      case "delivered":
      case "read":
        await this.onReceipt(e);
        break;
      case "sent":
        await this.onSent(e);
        break;
      case "presence":
        this.presence.set(e.user, { online: e.online, lastSeen: e.lastSeen });
        break;
      case "synced":
        break;
      case "error":
        if (actionOf(e.code) === "reconnect") break; // (the status line says it reconnects)
        this.alert = { text: `${e.name === "PROTOCOL" ? "protocol error" : e.name}: ${e.message}`,
          fatal: e.fatal };
        if (e.ref) {
          const o = this.outbox.get(e.ref);
          if (o) { // refused for good: keep the text visible, marked failed
            this.outbox.delete(e.ref);
            await this.store.write([], [["outbox", e.ref]]);
          }
        }
        if (e.fatal) this.status = "signed out";
        if (e.fatal && e.code === 3) forgetToken();
        break;
    }
    this.scheduleRender();
  }

  /** Draw once for whatever arrived within RENDER_MS: a backlog of a thousand messages into
   *  the open conversation is then a few redraws, not a thousand (74 s -> see docs/WEB.md). */
  scheduleRender(): void {
    if (this.renderTimer !== null) return;
    this.renderTimer = setTimeout(() => {
      this.renderTimer = null;
      // A click is a press and a release on one element: drawn in between, the pressed link
      // or button is replaced, the release falls on its copy, and the click is lost. So what
      // arrives during a press is drawn after it (PRESS_HOLD_MS at most: a release may be
      // missed). One second was too short: a click held across a round trip on a busy machine.
      if (this.pressedAt !== null && performance.now() - this.pressedAt < PRESS_HOLD_MS) {
        this.scheduleRender();
        return;
      }
      this.render();
      this.markRead();
    }, Math.max(RENDER_MS, 4 * this.renderCost)); // (drawing takes at most ~1/5 of the time)
  }

  private describe(ev: Record<string, unknown>, sender: string): string {
    const by = String(ev.by ?? sender);
    const users = Array.isArray(ev.users) ? (ev.users as string[]).join(", ") : "";
    switch (ev.kind) {
      case "created": return `${by} created the group "${String(ev.name ?? "")}"`;
      case "added": return `${by} added ${users}`;
      case "removed": return `${by} removed ${users}`;
      case "left": return `${users || by} left`;
      case "renamed": return `${by} renamed the group to "${String(ev.name ?? "")}"`;
      case "mode": {
        const mode = MODE_NAMES[Number(ev.mode)] ?? String(ev.mode);
        return `${by} made the chat ${mode}${ev.ttl ? ` (${ev.ttl} s)` : ""}`;
      }
      default: return `${by}: ${String(ev.kind)}`;
    }
  }

  private async onMessage(e: Extract<Event, { kind: "message" }>): Promise<void> {
    const chat = this.chat(e.conv);
    const mine = e.sender === this.me;
    const text = e.event ? this.describe(e.event, e.sender) : dec.decode(e.body);
    const msg: StoredMessage = { conv: e.conv, seq: e.seq, ts: e.ts, sender: e.sender, id: e.id, text,
      event: e.event, status: mine ? SENT : 0, media: e.media };
    const old = this.msgs(e.conv).get(e.seq);
    if (old) msg.status = Math.max(old.status, msg.status);
    this.msgs(e.conv).set(e.seq, msg);
    if (e.ts >= chat.lastTs) {
      chat.lastTs = e.ts;
      const shown = text || (e.media.length ? "Photo" : "");
      chat.lastText = e.event ? text : `${chat.group && !mine ? e.sender + ": " : ""}${shown}`;
    }
    if (e.event && chat.group) {
      const kind = e.event.kind;
      if (kind === "renamed" || kind === "created") chat.title = String(e.event.name ?? chat.title);
      if (kind === "mode") { chat.mode = Number(e.event.mode); chat.ttl = Number(e.event.ttl ?? 0); }
      const users = (e.event.users as string[] | undefined) ?? [];
      if ((kind === "removed" || kind === "left") && (users.includes(this.me) || (!users.length && e.sender === this.me))) {
        chat.left = true;
      }
      if (kind === "added" && users.includes(this.me)) chat.left = false;
      this.refreshGroup(chat.group);
    } else if (e.event?.kind === "mode") {
      chat.mode = Number(e.event.mode);
      chat.ttl = Number(e.event.ttl ?? 0);
    }
    if (chat.group && !this.groups.has(chat.group)) this.refreshGroup(chat.group);
    if (!mine && !e.event && e.seq > chat.readUpTo) chat.unread += 1;
    const puts: Array<["chats" | "messages" | "outbox", unknown]> = [["messages", msg], ["chats", chat]];
    await this.store.write(puts, this.outbox.has(e.id) && mine ? [["outbox", e.id]] : []);
    if (mine) this.outbox.delete(e.id);
  }

  private async onReceipt(e: Extract<Event, { kind: "delivered" | "read" }>): Promise<void> {
    const chat = this.chat(e.conv);
    const puts: Array<["chats" | "messages", unknown]> = [];
    if (e.by === this.me) { // read on another device of mine
      const upto = Math.max(...e.seqs);
      if (e.kind === "read" && upto > chat.readUpTo) {
        chat.readUpTo = upto;
        chat.unread = [...this.msgs(e.conv).values()].filter((m) => m.seq > upto && m.sender !== this.me && !m.event).length;
        puts.push(["chats", chat]);
      }
    } else {
      const status = e.kind === "read" ? READ : DELIVERED;
      for (const seq of e.seqs) {
        const m = this.msgs(e.conv).get(seq);
        if (m && m.sender === this.me && m.status < status) {
          m.status = status;
          puts.push(["messages", m]);
        } else if (!m) this.keepEarly(`${e.conv} ${seq}`, status);
      }
    }
    await this.store.write(puts);
  }

  /** A receipt for a seq not here yet, kept (the newest 1,000) until its Sent comes. */
  private keepEarly(key: string, status: number): void {
    this.early.set(key, Math.max(this.early.get(key) ?? 0, status));
    if (this.early.size > 1000) this.early.delete(this.early.keys().next().value!);
  }

  private async onSent(e: Extract<Event, { kind: "sent" }>): Promise<void> {
    const o = this.outbox.get(e.id);
    if (!o) return;
    this.outbox.delete(e.id);
    const chat = this.chat(e.conv);
    const old = this.msgs(e.conv).get(e.seq);
    const key = `${e.conv} ${e.seq}`;
    const early = this.early.get(key) ?? 0;
    this.early.delete(key);
    const msg: StoredMessage = { conv: e.conv, seq: e.seq, ts: e.ts, sender: this.me, id: e.id, text: o.text,
      event: null, status: Math.max(old?.status ?? 0, SENT, early), media: o.media ?? [] };
    this.msgs(e.conv).set(e.seq, msg);
    if (e.ts >= chat.lastTs) { chat.lastTs = e.ts; chat.lastText = o.text || (o.media?.length ? "Photo" : ""); }
    await this.store.write([["messages", msg], ["chats", chat]], [["outbox", e.id]]);
  }

  // ---- actions ---------------------------------------------------------------------------

  /** Type a message: into the outbox (IndexedDB) first, then out (again after reconnects). */
  async say(text: string, media: Media[] = []): Promise<void> {
    const conv = this.open;
    if (!conv || (!text.trim() && !media.length)) return;
    const chat = this.chat(conv);
    const o: OutboxEntry = { id: this.client.newId(), conv, to: chat.group ? null : this.peer(conv),
      group: chat.group, text, ts: Date.now(), media };
    this.outbox.set(o.id, o);
    chat.lastTs = Math.max(chat.lastTs, o.ts);
    chat.lastText = text || "Photo";
    await this.store.write([["outbox", o], ["chats", chat]]);
    this.dispatch(o);
    this.render();
  }

  dispatch(o: OutboxEntry): void {
    this.client.send(o.group ? { group: o.group } : { user: o.to! }, enc.encode(o.text), o.id, o.media ?? [])
      .catch(() => { /* (the refusal comes as an error event too) */ });
  }

  /** Compress, upload (unless the node has it already) and send a picked or pasted image. The
   *  upload needs the connection; the message then waits in the outbox like any other. */
  async sendImage(file: Blob, caption = ""): Promise<void> {
    try {
      if (!this.client.connected) throw new Error("sending a photo needs the connection: try again when online");
      const bytes = await compress(file);
      const sha = await sha256(bytes);
      const slot = await this.client.request<Decoded<"Slot">>((rid) => ({ type: "UploadSlot", rid, sha256: sha,
        size: bytes.length, mime: "image/jpeg" }));
      const media = slot.media ?? await upload(slot.url, slot.token, bytes);
      await this.say(caption, [media]);
    } catch (err) {
      this.fail(err);
    }
  }

  async showImage(m: Media): Promise<void> {
    try {
      this.viewer = { url: await fullUrl(m, this.token, this.device), alt: `photo, ${m.width}×${m.height}` };
      this.render();
    } catch (err) {
      this.fail(err);
    }
  }

  markRead(): void {
    const conv = this.open;
    if (!conv || document.visibilityState !== "visible" || !this.client?.connected) return;
    const chat = this.chat(conv);
    const seqs = [...this.msgs(conv).values()].filter((m) => m.sender !== this.me).map((m) => m.seq);
    const top = seqs.length ? Math.max(...seqs) : 0;
    if (top > chat.readUpTo || chat.unread) {
      chat.unread = 0;
      if (top > chat.readUpTo) {
        chat.readUpTo = top;
        this.client.markRead(conv, top);
      }
      void this.store.write([["chats", chat]]);
    }
  }

  refreshGroups(): void {
    this.client.request<Decoded<"Groups">>((rid) => ({ type: "GroupList", rid })).then((g) => {
      for (const id of g.groups) {
        this.chat(`g:${id}`);
        this.refreshGroup(id);
      }
      this.render();
    }).catch((err) => this.fail(err));
  }

  refreshGroup(id: string): void {
    this.client.request<Decoded<"Group">>((rid) => ({ type: "GroupInfo", rid, group: id })).then((g) => this.gotGroup(g))
      .catch(() => { /* not a member (any more) */ });
  }

  gotGroup(g: Decoded<"Group">): void {
    this.groups.set(g.group, { name: g.name, members: g.members, admins: g.admins, mode: g.mode, ttl: g.ttl });
    const chat = this.chat(`g:${g.group}`);
    chat.title = g.name;
    chat.mode = g.mode;
    chat.ttl = g.ttl;
    chat.left = !g.members.includes(this.me);
    if (!chat.lastTs) chat.lastTs = 1;
    void this.store.write([["chats", chat]]);
    this.render();
  }

  groupAction(make: (rid: number) => Frame): Promise<void> {
    return this.client.request<Decoded<"Group">>(make).then((g) => {
      this.gotGroup(g);
      this.recent(`g:${g.group}`);
    }).catch((err) => this.fail(err));
  }

  /** The newest page of a chat, merged in: the chat events of one's own changes come to the
   *  other members, not to the device that made them. */
  recent(conv: string): void {
    this.client.request<Decoded<"HistoryPage">>((rid) => ({ type: "History", rid, conv, before: null, limit: 20 }))
      .then((page) => this.merge(conv, page)).catch(() => { /* (not a member any more) */ });
  }

  async merge(conv: string, page: Decoded<"HistoryPage">): Promise<void> {
    const puts: Array<["messages", unknown]> = [];
    for (const it of page.items) {
      if (this.msgs(conv).has(it.seq)) continue;
      const text = it.event ? this.describe(it.event, it.sender) : dec.decode(it.body);
      const m: StoredMessage = { conv, seq: it.seq, ts: it.ts, sender: it.sender, id: it.id, text,
        event: it.event, status: it.sender === this.me ? SENT : 0, media: it.media };
      this.msgs(conv).set(it.seq, m);
      puts.push(["messages", m]);
    }
    await this.store.write(puts);
    this.scheduleRender();
  }

  fail(err: unknown): void {
    const e = err as { code?: number; detail?: string; message?: string };
    this.alert = { text: e.code ? `${codeName(e.code)}: ${e.detail}` : String(e.message ?? err), fatal: false };
    this.render();
  }

  olderHistory(conv: string): void {
    if (this.msgs(conv).size + this.outbox.size > this.shown) { // drawn from what is here first
      const list = document.querySelector(".messages");
      const fromBottom = list ? list.scrollHeight - list.scrollTop : 0;
      this.shown += SHOWN;
      this.render();
      const after = document.querySelector(".messages");
      if (after) after.scrollTop = after.scrollHeight - fromBottom;
      return;
    }
    if (this.paging || this.historyMore.get(conv) === false || !this.client.connected) return;
    const known = [...this.msgs(conv).keys()];
    const before = known.length ? Math.min(...known) : undefined;
    if (before === 1) return;
    this.paging = true;
    this.client.request<Decoded<"HistoryPage">>((rid) => ({ type: "History", rid, conv, before: before ?? null, limit: 50 }))
      .then(async (page) => {
        this.historyMore.set(conv, page.more);
        await this.merge(conv, page);
        const list = document.querySelector(".messages");
        const fromBottom = list ? list.scrollHeight - list.scrollTop : 0;
        this.render();
        const after = document.querySelector(".messages");
        if (after) after.scrollTop = after.scrollHeight - fromBottom;
      })
      .catch((err) => {
        this.historyMore.set(conv, false);
        if ((err as { code?: number }).code !== 12) this.fail(err);
      })
      .finally(() => { this.paging = false; });
  }

  // ---- drawing -------------------------------------------------------------------------------

  route(): void {
    const m = /^#\/chat\/(.+)$/.exec(location.hash);
    const conv = m ? decodeURIComponent(m[1]!) : null;
    if (conv !== this.open) {
      this.open = conv;
      this.shown = SHOWN;
      this.panel = "none";
      this.readBy = null;
      if (conv?.startsWith("d:")) this.client.watch([this.peer(conv)]);
      if (conv?.startsWith("g:")) this.refreshGroup(conv.slice(2));
    }
    this.render();
    this.markRead();
    const list = document.querySelector(".messages");
    if (list) list.scrollTop = list.scrollHeight;
    if (conv && list && list.scrollHeight <= list.clientHeight) this.olderHistory(conv);
  }

  render(): void {
    const started = performance.now();
    this.draw();
    this.renderCost = performance.now() - started;
  }

  private draw(): void {
    if (this.renderTimer !== null) {
      clearTimeout(this.renderTimer);
      this.renderTimer = null;
    }
    const focused = document.activeElement as HTMLInputElement | HTMLSelectElement | null;
    const keep = focused?.dataset.keep ? { key: focused.dataset.keep, value: focused.value,
      start: "selectionStart" in focused ? focused.selectionStart : null,
      end: "selectionEnd" in focused ? focused.selectionEnd : null } : null;
    const oldList = document.querySelector(".messages");
    const atBottom = !oldList || oldList.scrollHeight - oldList.scrollTop - oldList.clientHeight < 40;
    const scrollTop = oldList?.scrollTop ?? 0;
    clear(this.root);
    this.root.className = this.open ? "app show-conv" : "app";
    this.root.append(this.sidebar(), this.conversation());
    if (this.viewer) {
      const close = () => { this.viewer = null; this.render(); };
      this.root.append(h("div", { class: "viewer", role: "dialog", "aria-label": "photo", "data-testid": "viewer",
        onclick: close, onkeydown: (ev: globalThis.Event) => { if ((ev as KeyboardEvent).key === "Escape") close(); } },
      h("img", { src: this.viewer.url, alt: this.viewer.alt }),
      h("button", { type: "button", class: "close", autofocus: true }, "Close")));
      this.root.querySelector<HTMLElement>(".viewer .close")?.focus();
    }
    if (keep) {
      const el = this.root.querySelector<HTMLInputElement | HTMLSelectElement>(`[data-keep="${keep.key}"]`);
      if (el) {
        el.value = keep.value;
        el.focus();
        if (el instanceof HTMLInputElement && el.type === "text") el.setSelectionRange(keep.start, keep.end);
      }
    }
    const list = document.querySelector(".messages");
    if (list) list.scrollTop = atBottom ? list.scrollHeight : scrollTop;
  }

  sidebar(): HTMLElement {
    const chats = [...this.chats.values()].sort((a, b) => b.lastTs - a.lastTs);
    return h("section", { class: "sidebar", "aria-label": "chats" },
      h("header", { class: "bar" },
        h("strong", { class: "me", "data-testid": "me" }, this.me),
        h("span", { class: "status", "data-testid": "status" }, this.status),
        h("button", { type: "button", onclick: () => { this.panel = "new-chat"; this.render(); } }, "New chat"),
        h("button", { type: "button", onclick: () => { this.panel = "new-group"; this.render(); } }, "New group")),
      this.alertBox(),
      this.panel === "new-chat" ? this.newChatForm() : null,
      this.panel === "new-group" ? this.newGroupForm() : null,
      h("ul", { class: "chat-list", "data-testid": "chat-list" }, ...chats.map((c) =>
        h("li", {},
          h("a", { href: `#/chat/${encodeURIComponent(c.conv)}`, class: c.conv === this.open ? "chat active" : "chat",
            "data-conv": c.conv },
            h("span", { class: "title" }, c.title),
            c.unread ? h("span", { class: "unread", "aria-label": `${c.unread} unread`, "data-testid": "unread" }, c.unread) : null,
            h("span", { class: "last" }, c.lastText))))));
  }

  alertBox(): HTMLElement | null {
    if (!this.alert) return null;
    return h("div", { class: this.alert.fatal ? "alert fatal" : "alert", role: "alert", "data-testid": "alert" },
      h("span", {}, this.alert.text),
      this.alert.fatal
        ? h("button", { type: "button", onclick: () => { forgetToken(); location.reload(); } }, "Sign in again")
        : h("button", { type: "button", "aria-label": "dismiss", onclick: () => { this.alert = null; this.render(); } }, "×"));
  }

  newChatForm(): HTMLElement {
    return h("form", { class: "panel", onsubmit: (ev: Event | globalThis.Event) => {
      (ev as globalThis.Event).preventDefault();
      const user = (document.getElementById("new-chat-user") as HTMLInputElement).value.trim();
      if (!ID.test(user)) { this.fail(new Error(`"${user}" is not a user name`)); return; }
      const conv = this.directConv(user);
      this.chat(conv);
      this.panel = "none";
      location.hash = `#/chat/${encodeURIComponent(conv)}`;
    } },
    h("label", { for: "new-chat-user" }, "Chat with"),
    h("input", { id: "new-chat-user", "data-keep": "new-chat", placeholder: "user name", autocomplete: "off", required: true }),
    h("button", { type: "submit" }, "Open"));
  }

  newGroupForm(): HTMLElement {
    return h("form", { class: "panel", onsubmit: (ev: globalThis.Event) => {
      ev.preventDefault();
      const name = (document.getElementById("new-group-name") as HTMLInputElement).value;
      const members = (document.getElementById("new-group-members") as HTMLInputElement).value
        .split(/[\s,]+/).filter(Boolean);
      this.panel = "none";
      void this.client.request<Decoded<"Group">>((rid) => ({ type: "GroupCreate", rid, name, members }))
        .then((g) => {
          this.gotGroup(g);
          location.hash = `#/chat/${encodeURIComponent(`g:${g.group}`)}`;
        }).catch((err) => this.fail(err));
    } },
    h("label", { for: "new-group-name" }, "Group name"),
    h("input", { id: "new-group-name", "data-keep": "new-group-name", required: true, maxlength: 256 }),
    h("label", { for: "new-group-members" }, "Members"),
    h("input", { id: "new-group-members", "data-keep": "new-group-members", placeholder: "bob, carol" }),
    h("button", { type: "submit" }, "Create"));
  }

  subtitle(chat: StoredChat): string {
    if (chat.group) {
      const g = this.groups.get(chat.group);
      return chat.left ? "you are no longer a member" : g ? g.members.join(", ") : "";
    }
    const p = this.presence.get(this.peer(chat.conv));
    return p ? lastSeenText(p.online, p.lastSeen) : "";
  }

  conversation(): HTMLElement {
    const conv = this.open;
    if (!conv) return h("section", { class: "conversation empty" }, h("p", {}, "Pick a chat, or start one."));
    const chat = this.chat(conv);
    const rows: Array<{ seq: number; ts: number; m?: StoredMessage; o?: OutboxEntry }> = [
      ...[...this.msgs(conv).values()].map((m) => ({ seq: m.seq, ts: m.ts, m })),
      ...[...this.outbox.values()].filter((o) => o.conv === conv).map((o) => ({ seq: Infinity, ts: o.ts, o })),
    ].sort((a, b) => a.seq - b.seq || a.ts - b.ts).slice(-this.shown);
    const list = h("ol", { class: "messages", "data-testid": "messages", tabindex: 0,
      onscroll: (ev: globalThis.Event) => {
        if ((ev.target as HTMLElement).scrollTop < 30) this.olderHistory(conv);
      } },
    ...rows.map((r) => this.messageRow(chat, r.m, r.o)));
    return h("section", { class: "conversation", "aria-label": "conversation" },
      h("header", { class: "bar" },
        h("a", { href: "#", class: "back", "aria-label": "back to chats" }, "‹"),
        h("div", { class: "who" },
          h("strong", { class: "title", "data-testid": "conv-title" }, chat.title),
          h("span", { class: "presence", "data-testid": "presence" }, this.subtitle(chat))),
        h("button", { type: "button", "aria-expanded": String(this.panel === "info"),
          onclick: () => { this.panel = this.panel === "info" ? "none" : "info"; this.render(); } }, "Info")),
      this.panel === "info" ? this.infoPanel(chat) : null,
      this.readBy ? h("div", { class: "panel read-by", "data-testid": "read-by" }, this.readBy.text) : null,
      list,
      chat.left ? h("p", { class: "composer" }, "You can't send messages to this group.") :
        h("form", { class: "composer", onsubmit: (ev: globalThis.Event) => {
          ev.preventDefault();
          const input = (ev.target as HTMLFormElement).elements.namedItem("text") as HTMLInputElement;
          const text = input.value;
          input.value = "";
          void this.say(text);
        } },
        h("label", { class: "attach", title: "send a photo" }, "Photo",
          h("input", { type: "file", accept: "image/*", "aria-label": "attach a photo", class: "file",
            onchange: (ev: globalThis.Event) => {
              const input = ev.target as HTMLInputElement;
              const file = input.files?.[0];
              input.value = "";
              if (file) void this.sendImage(file);
            } })),
        h("input", { name: "text", "data-keep": "composer", "aria-label": "message", placeholder: "Message",
          autocomplete: "off", maxlength: 16000, onpaste: (ev: globalThis.Event) => {
            const item = [...((ev as ClipboardEvent).clipboardData?.items ?? [])].find((i) => i.type.startsWith("image/"));
            const file = item?.getAsFile();
            if (file) {
              ev.preventDefault();
              void this.sendImage(file);
            }
          } }),
        h("button", { type: "submit" }, "Send")));
  }

  messageRow(chat: StoredChat, m?: StoredMessage, o?: OutboxEntry): HTMLElement {
    if (o) {
      return h("li", { class: "msg mine", "data-status": "pending", "data-id": o.id },
        ...this.thumbs(o.media ?? []),
        h("span", { class: "body" }, o.text),
        h("span", { class: "meta" }, clock(o.ts), " ", h("span", { class: "tick", title: "waiting to be sent" }, "◷")));
    }
    const msg = m!;
    if (msg.event) return h("li", { class: "msg event", "data-seq": msg.seq }, msg.text);
    const mine = msg.sender === this.me;
    const status = ["", "sent", "delivered", "read"][msg.status] ?? "";
    const tick = mine ? h("span", { class: `tick ${status}`, title: status }, msg.status >= DELIVERED ? "✓✓" : "✓") : null;
    return h("li", { class: mine ? "msg mine" : "msg", "data-seq": msg.seq, "data-status": mine ? status : undefined,
      onclick: mine && chat.group ? () => this.showReadBy(chat.conv, msg.seq) : undefined },
    chat.group && !mine ? h("span", { class: "sender" }, msg.sender) : null,
    ...this.thumbs(msg.media ?? []),
    h("span", { class: "body" }, msg.text),
    h("span", { class: "meta" }, clock(msg.ts), " ", tick));
  }

  thumbs(media: Media[]): HTMLElement[] {
    return media.map((m) => {
      const src = previewUrl(m);
      const size = m.width && m.height ? { width: Math.min(240, m.width), height: Math.round(Math.min(240, m.width) * m.height / m.width) } : {};
      return h("button", { type: "button", class: "thumb", "aria-label": "open the photo", onclick: (ev: globalThis.Event) => {
        ev.stopPropagation();
        void this.showImage(m);
      } }, src ? h("img", { src, alt: "photo", ...size }) : "Photo");
    });
  }

  showReadBy(conv: string, seq: number): void {
    this.client.request<Decoded<"ReceiptState">>((rid) => ({ type: "ReceiptQuery", rid, conv, seq }))
      .then((s) => {
        const part = (label: string, us: string[]) => (us.length ? `${label}: ${us.join(", ")}` : "");
        this.readBy = { seq, text: [part("Read by", s.read), part("Delivered to", s.delivered),
          part("Waiting for", s.pending)].filter(Boolean).join(" · ") || "No one yet" };
        this.render();
      }).catch((err) => this.fail(err));
  }

  infoPanel(chat: StoredChat): HTMLElement {
    const g = chat.group ? this.groups.get(chat.group) : undefined;
    const admin = !!g && g.admins.includes(this.me);
    const draft = this.modeDraft?.conv === chat.conv ? this.modeDraft : null;
    const choose = () => {
      this.modeDraft = { conv: chat.conv, mode: Number((modeSelect as HTMLSelectElement).value),
        ttl: Number((ttlInput as HTMLInputElement).value) };
    };
    const modeSelect = h("select", { id: "mode", "aria-label": "chat mode", "data-keep": "mode", onchange: choose },
      ...MODE_NAMES.map((n, i) => h("option", { value: i, selected: i === (draft?.mode ?? chat.mode) }, n)));
    const ttlInput = h("input", { id: "ttl", type: "number", min: 1, value: draft?.ttl ?? (chat.ttl || 86400),
      "data-keep": "ttl", "aria-label": "disappear after (seconds)", oninput: choose });
    const setMode = h("form", { class: "row", onsubmit: (ev: globalThis.Event) => {
      ev.preventDefault();
      const mode = Number((modeSelect as HTMLSelectElement).value);
      const ttl = mode === Mode.DISAPPEARING ? Number((ttlInput as HTMLInputElement).value) : 0;
      this.client.request((rid) => ({ type: "SetMode", rid, conv: chat.conv, mode, ttl }))
        .then(() => {
          if (this.modeDraft?.conv === chat.conv) this.modeDraft = null;
          chat.mode = mode;
          chat.ttl = ttl;
          void this.store.write([["chats", chat]]);
          if (chat.group) this.refreshGroup(chat.group);
          this.recent(chat.conv);
          this.render();
        }).catch((err) => this.fail(err));
    } }, h("label", { for: "mode" }, "Mode"), modeSelect, ttlInput,
    h("button", { type: "submit" }, "Set"));
    if (!chat.group) return h("div", { class: "panel info", "data-testid": "info" }, setMode);
    const group = chat.group;
    return h("div", { class: "panel info", "data-testid": "info" },
      h("ul", { class: "members", "data-testid": "members" }, ...(g?.members ?? []).map((u) =>
        h("li", {}, u, g!.admins.includes(u) ? " (admin)" : "",
          admin && u !== this.me ? h("button", { type: "button", "aria-label": `remove ${u}`,
            onclick: () => this.groupAction((rid) => ({ type: "GroupRemove", rid, group, users: [u] })) }, "Remove") : null))),
      admin ? h("form", { class: "row", onsubmit: (ev: globalThis.Event) => {
        ev.preventDefault();
        const users = (document.getElementById("add-members") as HTMLInputElement).value.split(/[\s,]+/).filter(Boolean);
        void this.groupAction((rid) => ({ type: "GroupAdd", rid, group, users }));
      } }, h("input", { id: "add-members", "data-keep": "add-members", "aria-label": "add members", placeholder: "user names" }),
      h("button", { type: "submit" }, "Add")) : null,
      admin ? h("form", { class: "row", onsubmit: (ev: globalThis.Event) => {
        ev.preventDefault();
        const name = (document.getElementById("rename") as HTMLInputElement).value;
        void this.groupAction((rid) => ({ type: "GroupRename", rid, group, name }));
      } }, h("input", { id: "rename", "data-keep": "rename", "aria-label": "group name", value: chat.title, maxlength: 256 }),
      h("button", { type: "submit" }, "Rename")) : null,
      admin ? setMode : h("p", {}, `Mode: ${MODE_NAMES[chat.mode]}`),
      chat.left ? null : h("button", { type: "button", class: "danger", onclick: () => {
        this.client.request((rid) => ({ type: "GroupLeave", rid, group }))
          .then(() => { chat.left = true; this.render(); }).catch((err) => this.fail(err));
      } }, "Leave group"));
  }
}

// ---- start ---------------------------------------------------------------------------------

function signIn(root: HTMLElement, problem = ""): void {
  clear(root);
  root.className = "app signin";
  root.append(h("form", { class: "signin-form", onsubmit: (ev: globalThis.Event) => {
    ev.preventDefault();
    const token = (document.getElementById("token") as HTMLInputElement).value.trim();
    if (!readToken(token)) { signIn(root, "That is not a chatd token."); return; }
    saveToken(token);
    void main();
  } },
  h("h1", {}, "chatd"),
  h("p", {}, "Sign in with a token from ", h("code", {}, "chatd token USER"), ", or open the link it prints."),
  problem ? h("p", { class: "alert fatal", role: "alert", "data-testid": "alert" }, problem) : null,
  h("label", { for: "token" }, "Token"),
  h("input", { id: "token", type: "password", autocomplete: "off", required: true }),
  h("button", { type: "submit" }, "Sign in")));
}

async function main(): Promise<void> {
  const root = document.getElementById("app")!;
  const info = takeToken();
  if (!info) { signIn(root); return; }
  let wsUrl: string;
  try {
    const cfg = await (await fetch("/config.json", { cache: "no-cache" })).json() as
      { ws_port: number; ws_path: string; tls: boolean };
    if (!(cfg.ws_port > 0)) throw new Error("this node has no WebSocket endpoint (ws_port)");
    const host = location.hostname.includes(":") ? `[${location.hostname}]` : location.hostname;
    wsUrl = `${cfg.tls ? "wss" : "ws"}://${host}:${cfg.ws_port}${cfg.ws_path}`;
  } catch (exc) {
    signIn(root, `Cannot reach the node: ${(exc as Error).message}`);
    return;
  }
  const app = new App();
  (window as unknown as { chatd: App }).chatd = app;
  await app.start(info, wsUrl);
}

void main();
