"""Analytics (opt-in, setting `analytics = "redis://..."`): a stream of user actions without
message contents, and `chatd analytics`, its report.

`events` is sans-IO: the hooks the server calls and a capped in-memory buffer. `publisher`
moves the buffer to a Redis Stream in batches. `report` turns the stream's events into the
figures; `command` is the CLI. See docs/OPERATIONS.md, "Analytics".
"""
