"""Error codes of protocol v1, each with the action a client should take."""

from __future__ import annotations

import enum


class Action(enum.Enum):
    """What a client does on receiving an error."""

    RETRY = "retry"  # the same request may succeed later (after retry_ms if given)
    RECONNECT = "reconnect"  # open a new connection (with backoff) and resume
    STOP = "stop"  # do not repeat the request: it will fail the same way


class ErrorCode(enum.IntEnum):
    MALFORMED = 1
    UNSUPPORTED_VERSION = 2
    UNAUTHENTICATED = 3
    FORBIDDEN = 4
    UNKNOWN_TARGET = 5
    TOO_LARGE = 6
    RATE_LIMITED = 7
    SLOW_CONSUMER = 8
    SHUTTING_DOWN = 9
    INTERNAL = 10
    TIMEOUT = 11
    INVALID = 12

    @property
    def action(self) -> Action:
        return _ACTIONS[self]


_ACTIONS: dict[ErrorCode, Action] = {
    ErrorCode.MALFORMED: Action.STOP,
    ErrorCode.UNSUPPORTED_VERSION: Action.STOP,
    ErrorCode.UNAUTHENTICATED: Action.STOP,
    ErrorCode.FORBIDDEN: Action.STOP,
    ErrorCode.UNKNOWN_TARGET: Action.STOP,
    ErrorCode.TOO_LARGE: Action.STOP,
    ErrorCode.RATE_LIMITED: Action.RETRY,
    ErrorCode.SLOW_CONSUMER: Action.RECONNECT,
    ErrorCode.SHUTTING_DOWN: Action.RECONNECT,
    ErrorCode.INTERNAL: Action.RETRY,
    ErrorCode.TIMEOUT: Action.RECONNECT,
    ErrorCode.INVALID: Action.STOP,
}


class ProtocolError(Exception):
    """The peer broke the protocol. Carries the code to send back in an Error frame."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class LocalProtocolError(ValueError):
    """Our own code tried to do something the protocol forbids (a bug, not bad input)."""
