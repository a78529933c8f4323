// Error codes of protocol v1 (chatd/protocol/errors.py), each with what a client does.

export const ErrorCode = {
  MALFORMED: 1,
  UNSUPPORTED_VERSION: 2,
  UNAUTHENTICATED: 3,
  FORBIDDEN: 4,
  UNKNOWN_TARGET: 5,
  TOO_LARGE: 6,
  RATE_LIMITED: 7,
  SLOW_CONSUMER: 8,
  SHUTTING_DOWN: 9,
  INTERNAL: 10,
  TIMEOUT: 11,
  INVALID: 12,
} as const;
export type ErrorCodeValue = (typeof ErrorCode)[keyof typeof ErrorCode];

export type Action = "retry" | "reconnect" | "stop";

const ACTIONS: Record<number, Action> = {
  1: "stop", 2: "stop", 3: "stop", 4: "stop", 5: "stop", 6: "stop",
  7: "retry", 8: "reconnect", 9: "reconnect", 10: "retry", 11: "reconnect", 12: "stop",
};

export function codeName(code: number): string {
  for (const [name, value] of Object.entries(ErrorCode)) if (value === code) return name;
  return `E${code}`;
}

export function actionOf(code: number): Action | undefined {
  return ACTIONS[code];
}

/** The peer broke the protocol; `code` is what to report in an Error frame. */
export class ProtocolError extends Error {
  constructor(readonly code: number, readonly detail: string) {
    super(`${codeName(code)}: ${detail}`);
    this.name = "ProtocolError";
  }
}

/** Our own code tried something the protocol forbids (a bug, not bad input). */
export class LocalProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LocalProtocolError";
  }
}

export function malformed(detail: string): ProtocolError {
  return new ProtocolError(ErrorCode.MALFORMED, detail);
}
