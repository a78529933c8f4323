// The sans-IO protocol connection (chatd/protocol/connection.py): bytes in, frames out;
// frames in, bytes out. Like h11 and wsproto it does no I/O: feed what the transport
// received to receiveData() (an empty array for end of stream), pull frames with nextEvent()
// until it returns NEED_DATA, and turn outgoing frames into bytes with send(). It enforces the
// framing, the size limits and the allowed sequence of frames; every violation by the peer
// throws ProtocolError carrying the code to report.

import { decodeBody, encodeBody } from "./codec.js";
import { ErrorCode, LocalProtocolError, ProtocolError } from "./errors.js";
import { BY_NAME, CLIENT, type Frame, SERVER } from "./frames.js";
import {
  LENGTH_PREFIX_SIZE, MAX_CONTAINERS_FROM_CLIENT, MAX_CONTAINERS_FROM_SERVER, MAX_FRAME_SIZE,
  MAX_HELLO_SIZE, PROTOCOL_VERSION,
} from "./limits.js";

export type Role = "client" | "server";
/** "stream": TCP, a 4-byte big-endian length then the body; "message": one WebSocket message. */
export type Framing = "stream" | "message";
export type State = "handshake" | "open" | "closed";

export const NEED_DATA = Symbol("NEED_DATA"); // feed more bytes before asking again
export const PEER_CLOSED = Symbol("PEER_CLOSED"); // the stream ended cleanly between frames
export type Signal = typeof NEED_DATA | typeof PEER_CLOSED;

const EMPTY = new Uint8Array(0);

export class Connection {
  state: State = "handshake";
  private buf: Uint8Array = EMPTY;
  private msgs: Uint8Array[] = [];
  private eof = false;
  private error: ProtocolError | null = null;
  private helloDone = false; // server: Hello received; client: Hello sent
  private peerGoodbye = false; // the peer said goodbye: it may send nothing more

  constructor(readonly role: Role, readonly framing: Framing = "message",
              readonly maxFrameSize = MAX_FRAME_SIZE) {}

  get peer(): Role {
    return this.role === "client" ? "server" : "client";
  }

  /** Feed bytes from the transport (or one whole WebSocket message); empty means EOF. */
  receiveData(data: Uint8Array): void {
    if (this.eof) throw new LocalProtocolError("receiveData after end of stream");
    if (!data.length) this.eof = true;
    else if (this.framing === "message") this.msgs.push(data.slice());
    else if (!this.buf.length) this.buf = data.slice();
    else {
      const joined = new Uint8Array(this.buf.length + data.length);
      joined.set(this.buf);
      joined.set(data, this.buf.length);
      this.buf = joined;
    }
  }

  /** Bytes received but not yet turned into frames. */
  get buffered(): number {
    return this.framing === "message" ? this.msgs.reduce((n, m) => n + m.length, 0) : this.buf.length;
  }

  /** The largest frame accepted now: a server takes only a small one before Hello. */
  get frameLimit(): number {
    return this.role === "server" && !this.helloDone ? Math.min(this.maxFrameSize, MAX_HELLO_SIZE)
      : this.maxFrameSize;
  }

  /** The next frame, NEED_DATA or PEER_CLOSED. Throws ProtocolError on bad input. */
  nextEvent(): Frame | Signal {
    if (this.error) throw this.error;
    try {
      const body = this.nextBody();
      if (body === null) {
        if (!this.eof) return NEED_DATA;
        this.state = "closed";
        return PEER_CLOSED;
      }
      const frame = decodeBody(body, this.frameLimit,
        this.role === "server" ? MAX_CONTAINERS_FROM_CLIENT : MAX_CONTAINERS_FROM_SERVER);
      this.checkReceived(frame);
      return frame;
    } catch (exc) {
      if (exc instanceof ProtocolError) {
        this.error = exc;
        this.state = "closed";
      }
      throw exc;
    }
  }

  private nextBody(): Uint8Array | null {
    if (this.framing === "message") return this.msgs.shift() ?? null;
    const buf = this.buf;
    if (buf.length < LENGTH_PREFIX_SIZE) {
      if (this.eof && buf.length) throw new ProtocolError(ErrorCode.MALFORMED, "stream ended inside a length prefix");
      return null;
    }
    const size = new DataView(buf.buffer, buf.byteOffset, 4).getUint32(0);
    if (size > this.frameLimit) {
      throw new ProtocolError(ErrorCode.TOO_LARGE, `frame of ${size} bytes, limit ${this.frameLimit}`);
    }
    if (size === 0) throw new ProtocolError(ErrorCode.MALFORMED, "empty frame");
    const end = LENGTH_PREFIX_SIZE + size;
    if (buf.length < end) {
      if (this.eof) throw new ProtocolError(ErrorCode.MALFORMED, "stream ended inside a frame");
      return null;
    }
    const body = buf.slice(LENGTH_PREFIX_SIZE, end);
    this.buf = end === buf.length ? EMPTY : buf.subarray(end);
    return body;
  }

  private checkReceived(frame: Frame): void {
    const origin = BY_NAME.get(frame.type)!.origin;
    if (!(origin & (this.role === "server" ? CLIENT : SERVER))) {
      throw new ProtocolError(ErrorCode.MALFORMED, `${frame.type} may not be sent by a ${this.peer}`);
    }
    if (this.peerGoodbye) throw new ProtocolError(ErrorCode.MALFORMED, "frame after goodbye");
    if (frame.type === "Goodbye") {
      this.state = "closed";
      this.peerGoodbye = true;
      return;
    }
    if (this.state === "closed") return; // we said goodbye; the peer sent this before it knew
    if (this.role === "server") {
      if (frame.type === "Hello") {
        if (this.helloDone) throw new ProtocolError(ErrorCode.MALFORMED, "second hello");
        if (frame.version !== PROTOCOL_VERSION) {
          throw new ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
            `protocol version ${frame.version} is not supported; this server speaks ${PROTOCOL_VERSION}`);
        }
        this.helloDone = true;
      } else if (!this.helloDone) {
        throw new ProtocolError(ErrorCode.UNAUTHENTICATED, `${frame.type} before hello`);
      } else if (this.state === "handshake") {
        throw new ProtocolError(ErrorCode.MALFORMED, `${frame.type} before welcome`);
      }
    } else if (this.state === "handshake") {
      if (frame.type === "Welcome") this.state = "open";
      else if (frame.type !== "Error") {
        throw new ProtocolError(ErrorCode.MALFORMED, `${frame.type} before welcome`);
      }
    }
  }

  /** The bytes to write for this frame. Throws LocalProtocolError if it is not allowed now. */
  send(frame: Frame): Uint8Array {
    const origin = BY_NAME.get(frame.type)?.origin ?? 0;
    if (!(origin & (this.role === "server" ? SERVER : CLIENT))) {
      throw new LocalProtocolError(`a ${this.role} may not send ${frame.type}`);
    }
    if (this.state === "closed" && frame.type !== "Error" && frame.type !== "Goodbye") {
      throw new LocalProtocolError(`cannot send ${frame.type}: connection closed`);
    }
    if (this.state === "handshake") this.checkHandshakeSend(frame);
    if (frame.type === "Goodbye") this.state = "closed";
    return this.frameBytes(encodeBody(frame));
  }

  private checkHandshakeSend(frame: Frame): void {
    if (this.role === "client") {
      if ((frame.type !== "Hello" && frame.type !== "Goodbye") || (frame.type === "Hello" && this.helloDone)) {
        throw new LocalProtocolError(`client may not send ${frame.type} now`);
      }
      this.helloDone = true;
    } else if (frame.type === "Welcome") {
      if (!this.helloDone) throw new LocalProtocolError("welcome before hello");
      this.state = "open";
    } else if (frame.type !== "Error" && frame.type !== "Goodbye") {
      throw new LocalProtocolError(`server may not send ${frame.type} before welcome`);
    }
  }

  /** Wrap an encoded body for this transport. */
  frameBytes(body: Uint8Array): Uint8Array {
    if (body.length > this.maxFrameSize) {
      throw new LocalProtocolError(`frame of ${body.length} bytes exceeds ${this.maxFrameSize}`);
    }
    if (this.framing === "message") return body;
    const out = new Uint8Array(LENGTH_PREFIX_SIZE + body.length);
    new DataView(out.buffer).setUint32(0, body.length);
    out.set(body, LENGTH_PREFIX_SIZE);
    return out;
  }
}
