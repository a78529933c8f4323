// Frame <-> msgpack body (chatd/protocol/codec.py). No framing here: see connection.ts.

import { Decoder, encode, ExtData, ExtensionCodec } from "@msgpack/msgpack";
import { ErrorCode, malformed, ProtocolError } from "./errors.js";
import { BY_NAME, BY_TYPE, type Frame } from "./frames.js";
import { MAX_CONTAINERS_FROM_SERVER, MAX_FRAME_SIZE, MAX_LIST_LEN, MAX_MAP_LEN } from "./limits.js";
import { fromMap, isMap, toMap } from "./schema.js";

/** The msgpack body of a frame: a map with "t" first, then fields in spec order. */
export function encodeBody(frame: Frame): Uint8Array {
  const spec = BY_NAME.get(frame.type);
  if (!spec) throw new TypeError(`unknown frame ${String(frame.type)}`);
  const body = { t: spec.type, ...toMap(spec.fields, frame as unknown as Record<string, unknown>) };
  return encode(body);
}

// Protocol v1 has no ext types, the msgpack timestamp (-1) included: every ext value decodes
// to an ExtData, which the check below refuses.
const noExt = new ExtensionCodec();
noExt.register({
  type: -1,
  encode: () => null,
  decode: (data: Uint8Array, type: number) => new ExtData(type, data),
});

function decoder(maxSize: number): Decoder {
  return new Decoder({
    extensionCodec: noExt,
    maxStrLength: maxSize,
    maxBinLength: maxSize,
    maxArrayLength: MAX_LIST_LEN,
    maxMapLength: MAX_MAP_LEN,
    maxExtLength: maxSize,
    mapKeyConverter: (key: unknown) => {
      if (typeof key !== "string") throw new TypeError("map keys must be str");
      return key;
    },
  });
}

const decoders = new Map<number, Decoder>();

/** Counts maps and arrays (and refuses ext values): decoding work stays bounded. */
function checkTree(value: unknown, limit: number): void {
  let left = limit;
  const stack: unknown[] = [value];
  while (stack.length) {
    const v = stack.pop();
    if (v instanceof ExtData) throw malformed(`msgpack ext type ${v.type}: protocol v1 has no ext types`);
    if (Array.isArray(v) || isMap(v)) {
      if (--left < 0) throw malformed(`more than ${limit} maps and arrays in one frame`);
      stack.push(...(Array.isArray(v) ? v : Object.values(v)));
    }
  }
}

/** Decode one msgpack body into a frame. Any bad input throws ProtocolError. */
export function decodeBody(data: Uint8Array, maxSize = MAX_FRAME_SIZE,
                           maxContainers = MAX_CONTAINERS_FROM_SERVER): Frame {
  if (data.length > maxSize) {
    throw new ProtocolError(ErrorCode.TOO_LARGE, `frame of ${data.length} bytes, limit ${maxSize}`);
  }
  let obj: unknown;
  try {
    let d = decoders.get(maxSize);
    if (!d) decoders.set(maxSize, (d = decoder(maxSize)));
    obj = d.decode(data);
  } catch (exc) {
    throw malformed(`not a msgpack value: ${(exc as Error).name}`);
  }
  checkTree(obj, maxContainers);
  if (!isMap(obj)) throw malformed(`frame must be a map, got ${Array.isArray(obj) ? "array" : typeof obj}`);
  const t = obj.t;
  if (typeof t !== "number" || !Number.isInteger(t)) throw malformed("frame needs an int type in key 't'");
  const spec = BY_TYPE.get(t);
  if (!spec) throw malformed(`unknown frame type ${t}`);
  return { type: spec.name, ...fromMap(spec.fields, obj, spec.name) } as Frame;
}
