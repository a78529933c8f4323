"""Who is where. `LocalRouter` knows the sessions of this process; a Redis-backed router
(several nodes) implements the same two calls."""

from .local import LocalRouter, Target

__all__ = ["LocalRouter", "Target"]
