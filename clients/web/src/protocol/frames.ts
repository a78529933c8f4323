// Every frame of protocol v1, as chatd/protocol/frames.py: type number, who may send it, and
// its fields (attribute, wire key, kind, default). A frame value is a plain object whose
// `type` is the frame's name; decoded frames have every field (defaults filled in).

import {
  MAX_BODY_SIZE, MAX_CONV_LEN, MAX_HISTORY_PAGE, MAX_ID_LEN, MAX_MEDIA_PER_MESSAGE,
  MAX_PREVIEW_SIZE, MAX_TOKEN_LEN,
} from "./limits.js";
import { bin, bool, f, type Field, int, type Kind, listOf, scalars, str, struct } from "./schema.js";

export const ID_PATTERN = "[A-Za-z0-9_.\\-]{1,64}";
export const CONV_PATTERN = `d:${ID_PATTERN}:${ID_PATTERN}|g:${ID_PATTERN}`;

const USER = str(MAX_ID_LEN, ID_PATTERN);
const DEVICE = USER;
const GROUP = USER;
const CLIENT_ID = str(MAX_ID_LEN, undefined, 1);
const CONV = str(MAX_CONV_LEN, CONV_PATTERN);
const TEXT = str();
const UINT = int();
const SEQ = int(1);
const RID = int(0, 2 ** 32 - 1);
const BODY = bin(MAX_BODY_SIZE * 16); // TOO_LARGE above MAX_BODY_SIZE is the server's (non-fatal) error
const USERS = listOf(USER);
const MIME = str(100, "[a-z]+/[A-Za-z0-9.+\\-]+");

export const MEDIA_SPEC: Field[] = [
  f("id", "id", str(128, undefined, 1)),
  f("mime", "mime", MIME),
  f("size", "size", UINT),
  f("width", "w", UINT, 0),
  f("height", "h", UINT, 0),
  f("sha256", "sha", bin(32), new Uint8Array()),
  f("preview", "pv", bin(MAX_PREVIEW_SIZE), new Uint8Array()),
];
const MEDIA: Kind = listOf(struct(MEDIA_SPEC), MAX_MEDIA_PER_MESSAGE);

const HISTORY_ITEM_SPEC: Field[] = [
  f("seq", "s", SEQ),
  f("ts", "ts", UINT),
  f("sender", "f", USER),
  f("device", "fd", DEVICE),
  f("id", "id", CLIENT_ID),
  f("body", "b", BODY, new Uint8Array()),
  f("media", "m", MEDIA, []),
  f("event", "ev", scalars, null),
];

export const CLIENT = 1;
export const SERVER = 2;
export const BOTH = 3;

export interface FrameSpec { name: FrameName; type: number; origin: number; fields: Field[] }

const SPECS: Array<[FrameName, number, number, Field[]]> = [
  ["Hello", 1, CLIENT, [f("version", "v", UINT), f("token", "tok", str(MAX_TOKEN_LEN, undefined, 1)),
    f("device", "dev", DEVICE, "default"), f("client", "cn", TEXT, ""), f("background", "bg", bool, false)]],
  ["Welcome", 2, SERVER, [f("version", "v", UINT), f("user", "u", USER), f("device", "dev", DEVICE),
    f("session", "sid", str(MAX_ID_LEN)), f("serverTime", "now", UINT), f("heartbeatMs", "hb", UINT),
    f("maxFrame", "mf", UINT), f("cursor", "q", UINT, 0), f("mediaUrl", "mu", str(1024), ""),
    f("server", "sv", str(64), "")]],
  ["Ping", 3, BOTH, [f("nonce", "n", UINT, 0)]],
  ["Pong", 4, BOTH, [f("nonce", "n", UINT, 0)]],
  ["Goodbye", 5, BOTH, [f("code", "code", UINT, 0), f("reason", "msg", TEXT, "")]],
  ["Error", 6, SERVER, [f("code", "code", UINT), f("message", "msg", str(1024), ""),
    f("ref", "ref", CLIENT_ID, null), f("rid", "r", RID, null), f("retryMs", "rt", UINT, null)]],
  ["Send", 10, CLIENT, [f("id", "id", CLIENT_ID), f("to", "to", USER, null), f("group", "g", GROUP, null),
    f("body", "b", BODY, new Uint8Array()), f("media", "m", MEDIA, []), f("after", "af", CLIENT_ID, null)]],
  ["Sent", 11, SERVER, [f("id", "id", CLIENT_ID), f("conv", "c", CONV), f("seq", "s", SEQ), f("ts", "ts", UINT)]],
  ["Deliver", 12, SERVER, [f("q", "q", SEQ), f("conv", "c", CONV), f("seq", "s", SEQ), f("ts", "ts", UINT),
    f("sender", "f", USER), f("device", "fd", DEVICE), f("id", "id", CLIENT_ID),
    f("body", "b", BODY, new Uint8Array()), f("group", "g", GROUP, null), f("media", "m", MEDIA, []),
    f("event", "ev", scalars, null)]],
  ["Ack", 13, CLIENT, [f("upto", "q", UINT)]],
  ["Read", 14, CLIENT, [f("conv", "c", CONV), f("upto", "s", SEQ)]],
  ["Receipt", 15, SERVER, [f("q", "q", SEQ), f("conv", "c", CONV), f("seqs", "ss", listOf(SEQ)),
    f("by", "by", USER), f("status", "st", int(1, 2)), f("ts", "ts", UINT), f("all", "all", bool, false)]],
  ["Sync", 16, CLIENT, []],
  ["Synced", 17, SERVER, [f("upto", "q", UINT)]],
  ["History", 20, CLIENT, [f("rid", "r", RID), f("conv", "c", CONV), f("before", "before", SEQ, null),
    f("limit", "n", int(1, MAX_HISTORY_PAGE), 50)]],
  ["HistoryPage", 21, SERVER, [f("rid", "r", RID), f("conv", "c", CONV),
    f("items", "items", listOf(struct(HISTORY_ITEM_SPEC), MAX_HISTORY_PAGE)), f("more", "more", bool, false)]],
  ["PresenceSubscribe", 30, CLIENT, [f("users", "us", USERS)]],
  ["PresenceUnsubscribe", 31, CLIENT, [f("users", "us", USERS)]],
  ["LastSeenQuery", 32, CLIENT, [f("rid", "r", RID), f("user", "u", USER)]],
  ["Presence", 33, SERVER, [f("user", "u", USER), f("online", "on", bool), f("lastSeen", "ls", UINT, null),
    f("rid", "r", RID, null)]],
  ["SetPrivacy", 34, CLIENT, [f("rid", "r", RID), f("lastSeen", "ls", str(16, "everyone|nobody"))]],
  ["GroupCreate", 40, CLIENT, [f("rid", "r", RID), f("name", "name", TEXT), f("members", "us", USERS, [])]],
  ["GroupAdd", 41, CLIENT, [f("rid", "r", RID), f("group", "g", GROUP), f("users", "us", USERS)]],
  ["GroupRemove", 42, CLIENT, [f("rid", "r", RID), f("group", "g", GROUP), f("users", "us", USERS)]],
  ["GroupLeave", 43, CLIENT, [f("rid", "r", RID), f("group", "g", GROUP)]],
  ["GroupRename", 44, CLIENT, [f("rid", "r", RID), f("group", "g", GROUP), f("name", "name", TEXT)]],
  ["GroupInfo", 45, CLIENT, [f("rid", "r", RID), f("group", "g", GROUP)]],
  ["GroupList", 46, CLIENT, [f("rid", "r", RID)]],
  ["Group", 47, SERVER, [f("rid", "r", RID), f("group", "g", GROUP), f("name", "name", TEXT),
    f("members", "us", USERS), f("admins", "ad", USERS), f("mode", "mode", int(0, 2), 0), f("ttl", "ttl", UINT, 0)]],
  ["Groups", 48, SERVER, [f("rid", "r", RID), f("groups", "gs", listOf(GROUP))]],
  ["SetMode", 50, CLIENT, [f("rid", "r", RID), f("conv", "c", CONV), f("mode", "mode", int(0, 2)),
    f("ttl", "ttl", int(0, 10 * 365 * 86400), 0)]],
  ["ReceiptQuery", 51, CLIENT, [f("rid", "r", RID), f("conv", "c", CONV), f("seq", "s", SEQ)]],
  ["ReceiptState", 52, SERVER, [f("rid", "r", RID), f("conv", "c", CONV), f("seq", "s", SEQ),
    f("delivered", "dl", USERS, []), f("read", "rd", USERS, []), f("pending", "pd", USERS, [])]],
  ["Ok", 60, SERVER, [f("rid", "r", RID)]],
  ["UploadSlot", 70, CLIENT, [f("rid", "r", RID), f("sha256", "sha", bin(32)), f("size", "size", UINT),
    f("mime", "mime", MIME)]],
  ["Slot", 71, SERVER, [f("rid", "r", RID), f("media", "m", struct(MEDIA_SPEC), null),
    f("url", "url", str(1024), ""), f("token", "tok", str(MAX_TOKEN_LEN), ""), f("expires", "exp", UINT, 0)]],
];

export const BY_NAME = new Map<FrameName, FrameSpec>();
export const BY_TYPE = new Map<number, FrameSpec>();
for (const [name, type, origin, fields] of SPECS) {
  const spec = { name, type, origin, fields };
  BY_NAME.set(name, spec);
  BY_TYPE.set(type, spec);
}

// ---- types ----------------------------------------------------------------------------------

export const Status = { DELIVERED: 1, READ: 2 } as const;
export const Mode = { TEMPORARY: 0, PERMANENT: 1, DISAPPEARING: 2 } as const;

export interface Media {
  id: string; mime: string; size: number; width?: number; height?: number;
  sha256?: Uint8Array; preview?: Uint8Array;
}
export type ChatEvent = Record<string, string | number | boolean | string[]>;
export interface HistoryItem {
  seq: number; ts: number; sender: string; device: string; id: string;
  body: Uint8Array; media: Media[]; event: ChatEvent | null;
}

interface FrameFields {
  Hello: { version: number; token: string; device?: string; client?: string; background?: boolean };
  Welcome: { version: number; user: string; device: string; session: string; serverTime: number;
    heartbeatMs: number; maxFrame: number; cursor?: number; mediaUrl?: string; server?: string };
  Ping: { nonce?: number };
  Pong: { nonce?: number };
  Goodbye: { code?: number; reason?: string };
  Error: { code: number; message?: string; ref?: string | null; rid?: number | null; retryMs?: number | null };
  Send: { id: string; to?: string | null; group?: string | null; body?: Uint8Array; media?: Media[];
    after?: string | null };
  Sent: { id: string; conv: string; seq: number; ts: number };
  Deliver: { q: number; conv: string; seq: number; ts: number; sender: string; device: string; id: string;
    body?: Uint8Array; group?: string | null; media?: Media[]; event?: ChatEvent | null };
  Ack: { upto: number };
  Read: { conv: string; upto: number };
  Receipt: { q: number; conv: string; seqs: number[]; by: string; status: number; ts: number; all?: boolean };
  Sync: Record<string, never>;
  Synced: { upto: number };
  History: { rid: number; conv: string; before?: number | null; limit?: number };
  HistoryPage: { rid: number; conv: string; items: HistoryItem[]; more?: boolean };
  PresenceSubscribe: { users: string[] };
  PresenceUnsubscribe: { users: string[] };
  LastSeenQuery: { rid: number; user: string };
  Presence: { user: string; online: boolean; lastSeen?: number | null; rid?: number | null };
  SetPrivacy: { rid: number; lastSeen: "everyone" | "nobody" };
  GroupCreate: { rid: number; name: string; members?: string[] };
  GroupAdd: { rid: number; group: string; users: string[] };
  GroupRemove: { rid: number; group: string; users: string[] };
  GroupLeave: { rid: number; group: string };
  GroupRename: { rid: number; group: string; name: string };
  GroupInfo: { rid: number; group: string };
  GroupList: { rid: number };
  Group: { rid: number; group: string; name: string; members: string[]; admins: string[];
    mode?: number; ttl?: number };
  Groups: { rid: number; groups: string[] };
  SetMode: { rid: number; conv: string; mode: number; ttl?: number };
  ReceiptQuery: { rid: number; conv: string; seq: number };
  ReceiptState: { rid: number; conv: string; seq: number; delivered?: string[]; read?: string[];
    pending?: string[] };
  Ok: { rid: number };
  UploadSlot: { rid: number; sha256: Uint8Array; size: number; mime: string };
  Slot: { rid: number; media?: Media | null; url?: string; token?: string; expires?: number };
}

export type FrameName = keyof FrameFields;
/** A frame of one type, e.g. `FrameOf<"Send">`; decoded frames carry every field. */
export type FrameOf<N extends FrameName> = { type: N } & FrameFields[N];
export type Frame = { [N in FrameName]: FrameOf<N> }[FrameName];
/** A frame as decoded: defaults filled in. */
export type Decoded<N extends FrameName> = { type: N } & Required<FrameFields[N]>;
