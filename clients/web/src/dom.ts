// DOM building with text only: strings become text nodes, never markup, so what people type
// (bodies, names, group titles) cannot inject HTML.

type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, string | number | boolean | ((e: Event) => void) | undefined>;

export function h(tag: string, attrs: Attrs = {}, ...children: Child[]): HTMLElement {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (typeof v === "function") el.addEventListener(k.replace(/^on/, ""), v);
    else if (k === "class") el.className = String(v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
  return el;
}

export function clear(el: Element): void {
  while (el.firstChild) el.firstChild.remove();
}

const pad = (n: number) => String(n).padStart(2, "0");

export function clock(ts: number): string {
  const d = new Date(ts);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** "last seen today at 14:02", "... yesterday at ...", "... on 2 Dec at ...". */
export function lastSeenText(online: boolean, lastSeen: number | null, now = Date.now()): string {
  if (online) return "online";
  if (lastSeen === null) return "";
  const d = new Date(lastSeen);
  const day = (t: number) => new Date(t).toDateString();
  if (day(lastSeen) === day(now)) return `last seen today at ${clock(lastSeen)}`;
  if (day(lastSeen) === day(now - 86400000)) return `last seen yesterday at ${clock(lastSeen)}`;
  const month = d.toLocaleString("en", { month: "short" });
  return `last seen on ${d.getDate()} ${month} at ${clock(lastSeen)}`;
}
