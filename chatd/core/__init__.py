"""The chat rules, in one place: pure, synchronous functions and value types, no I/O.

chatd is layered (docs/ARCHITECTURE.md):

  chatd.protocol   frames and bytes (sans-IO)
  chatd.core       the chat rules: who gets what, which receipts, groups, chat modes (sans-IO)
  chatd.store      storage mechanics behind the Store protocol: SQLite, Cassandra
  chatd.router     where a user's devices are: this process, other workers, other nodes
  chatd.server     sockets, sessions and request handlers: the only network code

The stores and the server call these functions; none of them decides a rule itself.

  convs      conversation ids: d:A:B (one-to-one, A <= B) and g:GROUP
  delivery   send targets, what an inbox shows a device, ack cursors, DELIVERED/READ receipts,
             "delivered/read by all" of a group, receipt state of one message
  groups     creating and changing groups: members, admins and succession, events, limits,
             who may do what
  modes      chat modes: their events and what each one keeps or forgets
  owners     shards of conversations, their owner among the live nodes (rendezvous hashing),
             the holder's view of a shard's lease
  wire       inbox items as the frames a device gets, and back
"""

from __future__ import annotations

from .values import (
    Delivery,
    GroupInfo,
    Item,
    Message,
    NewMessage,
    Notice,
    ReceiptNote,
    ReceiptState,
    Refusal,
    message_bytes,
    now_ms,
)

__all__ = ["Delivery", "GroupInfo", "Item", "Message", "NewMessage", "Notice", "ReceiptNote",
           "ReceiptState", "Refusal", "message_bytes", "now_ms"]
