// A tiny schema language, as chatd/protocol/schema.py: each field names its wire key and a
// kind that checks a decoded (untrusted) msgpack value; `wire` turns it back for encoding.
// Everything bad throws ProtocolError(MALFORMED).

import { malformed } from "./errors.js";
import { MAX_LIST_LEN, MAX_MAP_LEN, MAX_TEXT_LEN, MAX_UINT } from "./limits.js";

export interface Kind {
  check(value: unknown, where: string): unknown;
  wire(value: unknown): unknown;
}

const same = (v: unknown): unknown => v;

function typeName(v: unknown): string {
  if (v === null) return "nil";
  if (v instanceof Uint8Array) return "bin";
  if (Array.isArray(v)) return "array";
  return typeof v;
}

export function str(maxLen = MAX_TEXT_LEN, pattern?: string, minLen = 0): Kind {
  const re = pattern ? new RegExp(`^(?:${pattern})$`, "u") : undefined;
  return {
    check(v, where) {
      if (typeof v !== "string") throw malformed(`${where}: expected str, got ${typeName(v)}`);
      const n = [...v].length; // code points, as Python's len()
      if (n < minLen || n > maxLen) {
        throw malformed(`${where}: length ${n} outside ${minLen}..${maxLen}`);
      }
      if (re && !re.test(v)) throw malformed(`${where}: ${JSON.stringify(v.slice(0, 40))} does not match ${pattern}`);
      return v;
    },
    wire: same,
  };
}

export function int(lo = 0, hi = MAX_UINT): Kind {
  return {
    check(v, where) {
      // (msgpack floats decode to JS numbers too: an integral float passes here, where
      // Python says MALFORMED; servers never send floats)
      if (typeof v !== "number" || !Number.isInteger(v)) {
        throw malformed(`${where}: expected int, got ${typeName(v)}`);
      }
      if (v < lo || v > hi) throw malformed(`${where}: ${v} outside ${lo}..${hi}`);
      return v;
    },
    wire: same,
  };
}

export const bool: Kind = {
  check(v, where) {
    if (typeof v !== "boolean") throw malformed(`${where}: expected bool, got ${typeName(v)}`);
    return v;
  },
  wire: same,
};

export function bin(maxLen: number): Kind {
  return {
    check(v, where) {
      if (!(v instanceof Uint8Array)) throw malformed(`${where}: expected bin, got ${typeName(v)}`);
      if (v.length > maxLen) throw malformed(`${where}: ${v.length} bytes, at most ${maxLen}`);
      return v;
    },
    wire: same,
  };
}

export function listOf(item: Kind, maxLen = MAX_LIST_LEN): Kind {
  return {
    check(v, where) {
      if (!Array.isArray(v)) throw malformed(`${where}: expected array, got ${typeName(v)}`);
      if (v.length > maxLen) throw malformed(`${where}: ${v.length} items, at most ${maxLen}`);
      return v.map((x) => item.check(x, where));
    },
    wire(v) {
      return (v as unknown[]).map((x) => item.wire(x));
    },
  };
}

export function isMap(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

/** A small map of str -> str | int | bool | array of str: server-made event details. */
export const scalars: Kind = {
  check(v, where) {
    if (!isMap(v) || Object.keys(v).length > MAX_MAP_LEN) {
      throw malformed(`${where}: expected a map of at most ${MAX_MAP_LEN} entries`);
    }
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      if (Array.isArray(x)) listOf(str()).check(x, `${where}.${k}`);
      else if (!["string", "number", "boolean"].includes(typeof x) ||
               (typeof x === "number" && !Number.isInteger(x))) {
        throw malformed(`${where}.${k}: expected str, int, bool or array of str`);
      }
      out[k] = x;
    }
    return out;
  },
  wire: same,
};

/** A field: its attribute name, wire key, kind, and default (absent: required). */
export interface Field {
  attr: string;
  key: string;
  kind: Kind;
  required: boolean;
  dflt?: unknown;
}

export function f(attr: string, key: string, kind: Kind, ...dflt: [unknown?]): Field {
  return dflt.length ? { attr, key, kind, required: false, dflt: dflt[0] } :
    { attr, key, kind, required: true };
}

export function struct(spec: Field[]): Kind {
  return {
    check: (v, where) => fromMap(spec, v, where),
    wire: (v) => toMap(spec, v as Record<string, unknown>),
  };
}

function isDefault(v: unknown, dflt: unknown): boolean {
  if (v === undefined || v === dflt) return true;
  if (dflt === null) return v === null;
  if (Array.isArray(dflt)) return Array.isArray(v) && v.length === 0;
  if (dflt instanceof Uint8Array) return v instanceof Uint8Array && v.length === 0;
  return false;
}

export function fromMap(spec: Field[], v: unknown, where: string): Record<string, unknown> {
  if (!isMap(v)) throw malformed(`${where}: expected map, got ${typeName(v)}`);
  if (Object.keys(v).length > MAX_MAP_LEN) {
    throw malformed(`${where}: ${Object.keys(v).length} entries, at most ${MAX_MAP_LEN}`);
  }
  const out: Record<string, unknown> = {};
  for (const s of spec) {
    if (Object.hasOwn(v, s.key)) {
      const x = v[s.key];
      if (x === null && !s.required && s.dflt === null) {
        out[s.attr] = null;
        continue;
      }
      out[s.attr] = s.kind.check(x, s.key);
    } else if (s.required) {
      throw malformed(`${where}: missing field '${s.key}'`);
    } else {
      out[s.attr] = s.dflt;
    }
  }
  return out;
}

/** The wire map of a value: fields in spec order, defaults left out (the canonical form). */
export function toMap(spec: Field[], obj: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const s of spec) {
    const v = obj[s.attr];
    if (!s.required && isDefault(v, s.dflt)) continue;
    if (s.required && v === undefined) throw new TypeError(`missing field ${s.attr}`);
    out[s.key] = s.kind.wire(v);
  }
  return out;
}
