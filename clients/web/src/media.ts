// Images: compressed in the browser, uploaded through an upload slot (PROTOCOL.md, Images),
// shown from their inline preview at once and in full on demand. The HTTP listener that
// serves this app also takes the uploads, so requests go to this origin (the CSP allows no
// other): the path of the slot's URL, not its host.

import { decode } from "@msgpack/msgpack";
import type { Media } from "./protocol/index.js";
import { MEDIA_SPEC } from "./protocol/index.js";
import { fromMap } from "./protocol/schema.js";

export const MAX_SIDE = 2560; // the server re-encodes to this anyway: less to upload
const SHOWN_TYPES = new Set(["image/jpeg", "image/png", "image/webp", "image/gif"]);

/** The picked or pasted image as a JPEG of at most MAX_SIDE px on its longest side. */
export async function compress(file: Blob): Promise<Uint8Array> {
  const bitmap = await createImageBitmap(file).catch(() => {
    throw new Error("that file is not an image this browser can read");
  });
  const scale = Math.min(1, MAX_SIDE / Math.max(bitmap.width, bitmap.height));
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(bitmap.width * scale));
  canvas.height = Math.max(1, Math.round(bitmap.height * scale));
  const ctx = canvas.getContext("2d")!;
  ctx.fillStyle = "#fff"; // (JPEG has no transparency)
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  const blob = await new Promise<Blob | null>((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.85));
  if (!blob) throw new Error("the image could not be compressed");
  return new Uint8Array(await blob.arrayBuffer());
}

export async function sha256(bytes: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
}

/** PUT the bytes to the slot; the node answers 201 with the Media reference (msgpack). */
export async function upload(slotUrl: string, slotToken: string, bytes: Uint8Array): Promise<Media> {
  const path = new URL(slotUrl, location.href).pathname;
  const r = await fetch(path, { method: "PUT", body: bytes as Uint8Array<ArrayBuffer>,
    headers: { Authorization: `Bearer ${slotToken}`, "Content-Type": "image/jpeg" } });
  if (r.status !== 201) throw new Error(`the upload was refused (${r.status}): ${(await r.text()).trim()}`);
  return fromMap(MEDIA_SPEC, decode(new Uint8Array(await r.arrayBuffer())), "Media") as unknown as Media;
}

const urls = new Map<string, string>(); // object URLs made, by media id and size

function objectUrl(key: string, bytes: Uint8Array | Blob, mime: string): string {
  let url = urls.get(key);
  if (!url) {
    const type = SHOWN_TYPES.has(mime) ? mime : "application/octet-stream";
    url = URL.createObjectURL(bytes instanceof Blob ? bytes : new Blob([bytes as Uint8Array<ArrayBuffer>], { type }));
    urls.set(key, url);
  }
  return url;
}

/** The inline preview (a small JPEG inside the message), or "" if there is none. */
export function previewUrl(m: Media): string {
  return m.preview && m.preview.length ? objectUrl(`pv:${m.id}`, m.preview, "image/jpeg") : "";
}

/** The full image, downloaded with the device's token (only members of the chat get it). The
 *  device is named too (X-Chatd-Device), for a token that names none: in a TEMPORARY chat the
 *  server forgets an image once every recipient device has downloaded it. */
export async function fullUrl(m: Media, token: string, device: string): Promise<string> {
  const cached = urls.get(`full:${m.id}`);
  if (cached) return cached;
  const r = await fetch(`/v1/media/${encodeURIComponent(m.id)}`,
    { headers: { Authorization: `Bearer ${token}`, "X-Chatd-Device": device } });
  if (!r.ok) throw new Error(`the image could not be downloaded (${r.status}): ${(await r.text()).trim()}`);
  return objectUrl(`full:${m.id}`, await r.blob(), m.mime);
}
