"""The chaos checker's judge: a recorded history in, violations out. Pure: no I/O, no clock.

A history is a list of plain dicts (JSON as they are), in the order the driver saw them:

    {"t": "setup", "devices": {user: [device, ...]}, "convs": {conv: [user, ...]}}
    {"t": "send", "dev": "u/d", "id": cid, "conv": conv, "body": text}    send() called
    {"t": "sent", "dev": "u/d", "id": cid, "conv": conv, "seq": n}        SENT: send() returned
    {"t": "fail", "dev": "u/d", "id": cid, "error": text}                 the server refused it
    {"t": "msg", "dev": "u/d", "inc": k, "conv": conv, "seq": n, "from": user, "fdev": device,
     "id": cid, "body": text, "ev": bool}        a Message the SDK gave the app (incarnation k)
    {"t": "rcpt", "dev": "u/d", "inc": k, "kind": "delivered"|"read", "conv": conv,
     "seqs": [n, ...], "by": user}                                     a Delivered / Read event
    {"t": "conn", "dev": "u/d", "inc": k, "what": "connected"|"synced"|"disconnected"}
    {"t": "history", "conv": conv, "items": [{"seq", "from", "fdev", "id", "body", "ev"}]}
    {"t": "fault", "kind": name, ...}                                  (counted, not judged)

An incarnation is one SDK client of a device: an app restart makes a new one. The SDK drops
repeats within one client; a new client gets again what the old one had not acknowledged,
which the app drops by message id (so repeats across incarnations are counted, not judged).

The checks (each violation names the device, conversation, seq and message id):
- lost: a message that got SENT, never seen by a device that should get it (every device of
  every member, but the one that sent it);
- duplicated: one message seen twice by one incarnation (by id, or two items at one seq), or
  one message id at two seqs anywhere;
- reordered: within one incarnation, a conversation's seq went down;
- unexpected: a message nobody sent, or not as sent (conversation, body, the seq SENT named),
  two different messages at one seq, or one in a conversation the device is not part of;
- gaps: a seq a device should have, below the highest it saw in that conversation, that it
  never saw (or that no one ever saw and the store does not have);
- receipts: a message that got SENT whose sending device never saw Delivered or Read for it;
- history: the stored history read back at the end lacks an acknowledged message, has one
  twice, has one nobody sent, disagrees with what was delivered, or has a gap;
- send_order: a device's send SENT with a seq below that of an earlier send of the same
  device to the same chat (the recipients see its messages in another order than written).
"""

from __future__ import annotations

import copy
import random
from collections import defaultdict
from typing import Any

Record = dict[str, Any]
KINDS = ("lost", "duplicated", "reordered", "unexpected", "gaps", "receipts", "history",
         "send_order")
EXAMPLES = 10  # violations listed per kind in a summary (all are counted)


class _Item:
    __slots__ = ("body", "ev", "fdev", "ident")

    def __init__(self, ident: tuple[str, str], fdev: str, body: str, ev: bool) -> None:
        self.ident, self.fdev, self.body, self.ev = ident, fdev, body, ev


class _State:
    """Everything the checks need, gathered in one pass over the records."""

    def __init__(self, records: list[Record]) -> None:
        setup = next((r for r in records if r["t"] == "setup"), None)
        if setup is None:
            raise ValueError("no setup record in the history")
        self.devices: dict[str, list[str]] = setup["devices"]
        self.convs: dict[str, list[str]] = setup["convs"]
        self.sends: dict[tuple[str, str], Record] = {}
        self.acks: dict[tuple[str, str], Record] = {}
        self.failed: set[tuple[str, str]] = set()
        # device -> ids seen (any incarnation); device -> conv -> seqs seen
        self.seen: dict[str, set[tuple[str, str]]] = defaultdict(set)
        self.seen_seqs: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
        self.receipted: dict[str, set[tuple[str, int]]] = defaultdict(set)
        self.catalog: dict[str, dict[int, _Item]] = defaultdict(dict)  # conv -> seq -> item
        self.seqs_of: dict[tuple[str, str], set[tuple[str, int]]] = defaultdict(set)
        self.histories: dict[str, list[Record]] = {}
        self.msgs = self.rcpts = self.redelivered = self.connects = self.max_backlog = 0
        self.faults: dict[str, int] = defaultdict(int)
        self.v: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
        self._scan(records)

    def _catalog(self, conv: str, seq: int, item: _Item, where: str) -> None:
        have = self.catalog[conv].get(seq)
        if have is None:
            self.catalog[conv][seq] = item
        elif have.ident != item.ident:
            self.v["unexpected"].append({"why": "two messages at one seq", "conv": conv,
                                         "seq": seq, "ids": [list(have.ident),
                                                             list(item.ident)], "where": where})
        self.seqs_of[item.ident].add((conv, seq))

    def _check_send_order(self, records: list[Record]) -> None:
        """A device's sends to a chat, in the order it made them, each SENT above the last."""
        made: dict[tuple[str, str], list[str]] = defaultdict(list)
        for r in records:
            if r["t"] == "send":
                made[(r["dev"], r["conv"])].append(r["id"])
        for (dev, conv), ids in made.items():
            top, top_id = 0, ""
            for cid in dict.fromkeys(ids):
                ack = self.acks.get((_user(dev), cid))
                if ack is None:
                    continue
                if ack["seq"] < top:
                    self.v["send_order"].append({"dev": dev, "conv": conv, "id": cid,
                                                 "seq": ack["seq"], "made_after": top_id,
                                                 "whose_seq": top})
                elif ack["seq"] > top:
                    top, top_id = ack["seq"], cid

    def _scan(self, records: list[Record]) -> None:
        inc_ids: dict[tuple[str, int], set[tuple[str, str]]] = defaultdict(set)
        inc_seqs: dict[tuple[str, int], set[tuple[str, int]]] = defaultdict(set)
        last: dict[tuple[str, int, str], int] = {}
        backlog: dict[str, int | None] = {}
        for r in records:  # first what was sent (a message may be seen before its SENT)
            t = r["t"]
            if t == "send":
                self.sends.setdefault((_user(r["dev"]), r["id"]), r)
            elif t == "sent":
                ident = (_user(r["dev"]), r["id"])
                prev = self.acks.get(ident)
                if prev is not None and (prev["conv"], prev["seq"]) != (r["conv"], r["seq"]):
                    self.v["duplicated"].append({"why": "SENT twice with different seqs",
                                                 "id": list(ident), "conv": r["conv"],
                                                 "seqs": [prev["seq"], r["seq"]]})
                self.acks.setdefault(ident, r)
                send = self.sends.get(ident)
                if send is not None:
                    self._catalog(r["conv"], r["seq"], _Item(ident, _device(r["dev"]),
                                                             send["body"], False), "sent")
            elif t == "fail":
                self.failed.add((_user(r["dev"]), r["id"]))
        self._check_send_order(records)
        for r in records:
            t = r["t"]
            if t == "msg":
                self.msgs += 1
                dev, inc, conv, seq = r["dev"], r["inc"], r["conv"], r["seq"]
                ident = (r["from"], r["id"])
                where = {"dev": dev, "inc": inc, "conv": conv, "seq": seq, "id": list(ident)}
                if backlog.get(dev) is not None:
                    backlog[dev] = backlog[dev] + 1  # type: ignore[operator]
                key = (dev, inc)
                if ident in inc_ids[key] or (conv, seq) in inc_seqs[key]:
                    self.v["duplicated"].append({"why": "seen twice by one client", **where})
                    continue
                inc_ids[key].add(ident)
                inc_seqs[key].add((conv, seq))
                if ident in self.seen[dev]:
                    self.redelivered += 1  # by an earlier client of this device
                self.seen[dev].add(ident)
                self.seen_seqs[dev][conv].add(seq)
                prev_seq = last.get((dev, inc, conv), 0)
                if seq < prev_seq:
                    self.v["reordered"].append({"after": prev_seq, **where})
                last[(dev, inc, conv)] = max(prev_seq, seq)
                if _user(dev) not in self.convs.get(conv, ()):
                    self.v["unexpected"].append({"why": "not a member of the conversation",
                                                 **where})
                if not r["ev"]:
                    send = self.sends.get(ident)
                    ack = self.acks.get(ident)
                    if send is None:
                        self.v["unexpected"].append({"why": "never sent", **where})
                    elif send["conv"] != conv or send["body"] != r["body"]:
                        self.v["unexpected"].append({"why": "not what was sent", **where})
                    elif ack is not None and ack["seq"] != seq:
                        self.v["unexpected"].append({"why": f"SENT said seq {ack['seq']}",
                                                     **where})
                self._catalog(conv, seq, _Item(ident, r["fdev"], r["body"], r["ev"]), dev)
            elif t == "rcpt":
                self.rcpts += 1
                if backlog.get(r["dev"]) is not None:
                    backlog[r["dev"]] = backlog[r["dev"]] + 1  # type: ignore[operator]
                # (any `by`: a group's "all" receipt names whoever completed it, the sender
                # too; a user's own read marks cover other people's messages only)
                self.receipted[r["dev"]].update((r["conv"], s) for s in r["seqs"])
            elif t == "conn":
                if r["what"] == "connected":
                    self.connects += 1
                    backlog[r["dev"]] = 0
                elif r["what"] == "synced":
                    self.max_backlog = max(self.max_backlog, backlog.get(r["dev"]) or 0)
                    backlog[r["dev"]] = None
            elif t == "history":
                self.histories[r["conv"]] = r["items"]
            elif t == "fault":
                self.faults[r["kind"]] += 1
        for ident, places in self.seqs_of.items():
            if len(places) > 1:
                self.v["duplicated"].append({"why": "one message at several seqs",
                                             "id": list(ident), "at": sorted(places)})

    def expected_devices(self, conv: str, sender: str, fdev: str) -> list[str]:
        """Devices that get a message: every device of every member but the sending one
        (a user's other devices get copies; an event's actor only when they have several)."""
        out = []
        for u in self.convs.get(conv, ()):
            devs = self.devices.get(u, [])
            for d in devs:
                if u == sender and (d == fdev or len(devs) == 1):
                    continue
                out.append(f"{u}/{d}")
        return out

    def check_lost(self) -> None:
        for ident, ack in self.acks.items():
            for dev in self.expected_devices(ack["conv"], ident[0], _device(ack["dev"])):
                if ident not in self.seen[dev]:
                    self.v["lost"].append({"dev": dev, "conv": ack["conv"], "seq": ack["seq"],
                                           "id": list(ident)})

    def check_receipts(self) -> None:
        for ident, ack in self.acks.items():
            if not any(u != ident[0] for u in self.convs.get(ack["conv"], ())):
                continue  # nobody else in the conversation: no one to deliver to
            if (ack["conv"], ack["seq"]) not in self.receipted[ack["dev"]]:
                self.v["receipts"].append({"dev": ack["dev"], "conv": ack["conv"],
                                           "seq": ack["seq"], "id": list(ident)})

    def check_gaps(self) -> None:
        holes: set[tuple[str, int]] = set()
        for conv, members in self.convs.items():
            stored = {h["seq"]: _Item((h["from"], h["id"]), h["fdev"], h["body"], h["ev"])
                      for h in self.histories.get(conv, ())}
            for u in members:
                for d in self.devices.get(u, []):
                    dev = f"{u}/{d}"
                    mine = {s for s, it in self.catalog[conv].items()
                            if it.ident[0] == u and it.fdev == d}
                    seen = self.seen_seqs[dev][conv]
                    top = max(seen | mine, default=0)
                    for s in range(1, top):
                        if s in seen:
                            continue
                        it = self.catalog[conv].get(s) or stored.get(s)
                        if it is None:
                            if (conv, s) not in holes:
                                holes.add((conv, s))
                                self.v["gaps"].append({"why": "no one has this seq",
                                                       "conv": conv, "seq": s})
                        elif dev in self.expected_devices(
                                conv, it.ident[0], it.fdev):
                            self.v["gaps"].append({"dev": dev, "conv": conv, "seq": s,
                                                   "id": list(it.ident)})

    def check_history(self) -> None:
        for conv in self.convs:
            items = self.histories.get(conv)
            if items is None:
                self.v["history"].append({"why": "not read back", "conv": conv})
                continue
            by_seq: dict[int, Record] = {}
            ids: set[tuple[str, str]] = set()
            for it in items:
                ident = (it["from"], it["id"])
                if it["seq"] in by_seq:
                    self.v["history"].append({"why": "seq twice", "conv": conv,
                                              "seq": it["seq"]})
                if ident in ids:
                    self.v["history"].append({"why": "stored twice", "conv": conv,
                                              "seq": it["seq"], "id": list(ident)})
                by_seq[it["seq"]] = it
                ids.add(ident)
                if not it["ev"]:
                    send = self.sends.get(ident)
                    if send is None:
                        self.v["history"].append({"why": "never sent", "conv": conv,
                                                  "seq": it["seq"], "id": list(ident)})
                    elif send["conv"] != conv or send["body"] != it["body"]:
                        self.v["history"].append({"why": "not what was sent", "conv": conv,
                                                  "seq": it["seq"], "id": list(ident)})
            top = max(by_seq, default=0)
            missing = [s for s in range(1, top + 1) if s not in by_seq]
            if missing:
                self.v["history"].append({"why": "gap in the stored seqs", "conv": conv,
                                          "seqs": missing[:20]})
            for seq, item in self.catalog[conv].items():
                it = by_seq.get(seq)
                if it is None:
                    self.v["history"].append({"why": "missing", "conv": conv, "seq": seq,
                                              "id": list(item.ident)})
                elif (it["from"], it["id"]) != item.ident:
                    self.v["history"].append({"why": "differs from what was delivered",
                                              "conv": conv, "seq": seq,
                                              "id": list(item.ident)})


def _user(dev: str) -> str:
    return dev.split("/", 1)[0]


def _device(dev: str) -> str:
    return dev.split("/", 1)[1]


def _judged(records: list[Record], final: bool) -> _State:
    st = _State(records)
    st.check_lost()
    st.check_receipts()
    if final:
        st.check_gaps()
        st.check_history()
    return st


def violations(records: list[Record]) -> dict[str, list[Record]]:
    """Every violation of a finished run's history, by kind (check counts them and lists a
    few of each)."""
    return dict(_judged(records, True).v)


def check(records: list[Record], final: bool = True) -> dict[str, Any]:
    """Judge a history. `final`: the run is over (every device drained, the stored history
    read back), so lost, gaps, receipts and history are judged too; otherwise only what can
    never become right later (duplicated, reordered, unexpected) plus the outstanding
    counts of lost and receipts (for waiting until the system settles)."""
    st = _judged(records, final)
    counts = {k: len(st.v[k]) for k in KINDS}
    if not final:
        counts["gaps"] = counts["history"] = 0
    unacked = [k for k in st.sends if k not in st.acks and k not in st.failed]
    return {
        "ok": not any(counts[k] for k in KINDS if final or k not in ("lost", "receipts")),
        "violations": counts,
        "examples": {k: st.v[k][:EXAMPLES] for k in KINDS if st.v[k]},
        "stats": {
            "sends": len(st.sends), "acknowledged": len(st.acks), "refused": len(st.failed),
            "never_acknowledged": len(unacked),
            "never_acknowledged_but_stored": sum(1 for k in unacked if k in st.seqs_of),
            "messages_seen": st.msgs, "receipts_seen": st.rcpts,
            "redelivered_to_a_new_client": st.redelivered, "connections": st.connects,
            "max_backlog_items": st.max_backlog, "faults": dict(st.faults),
            "conversations": len(st.convs),
            "devices": sum(len(d) for d in st.devices.values()),
        },
    }


def verdict(result: dict[str, Any]) -> str:
    c, s = result["violations"], result["stats"]
    counts = ", ".join(f"{c[k]} {k}" for k in KINDS)
    faults = ", ".join(f"{n} {k}" for k, n in sorted(s["faults"].items())) or "no faults"
    word = "PASS" if result["ok"] else "FAIL"
    return (f"chaos: {word}: {s['acknowledged']:,} acknowledged of {s['sends']:,} sent;"
            f" {faults}; {counts}")


# ---- self-test: corrupt a clean history in each way; the checker must notice ---------------

def _msgs(records: list[Record]) -> list[int]:
    return [i for i, r in enumerate(records) if r["t"] == "msg"]


def _acked(records: list[Record]) -> dict[tuple[str, str], Record]:
    return {(_user(r["dev"]), r["id"]): r for r in records if r["t"] == "sent"}


def corrupt_lost(records: list[Record], rng: random.Random) -> list[Record]:
    """Every sighting of one acknowledged message on one device removed."""
    acks = _acked(records)
    cands = [i for i in _msgs(records) if (records[i]["from"], records[i]["id"]) in acks]
    r = records[rng.choice(cands)]
    return [x for x in records if not (x["t"] == "msg" and x["dev"] == r["dev"]
                                       and (x["from"], x["id"]) == (r["from"], r["id"]))]


def corrupt_duplicated(records: list[Record], rng: random.Random) -> list[Record]:
    """One message shown twice by one client."""
    i = rng.choice(_msgs(records))
    return [*records[: i + 1], dict(records[i]), *records[i + 1:]]


def corrupt_reordered(records: list[Record], rng: random.Random) -> list[Record]:
    """Two messages of one conversation swapped in one client's stream."""
    streams: dict[tuple[str, int, str], list[int]] = defaultdict(list)
    for i in _msgs(records):
        r = records[i]
        streams[(r["dev"], r["inc"], r["conv"])].append(i)
    cands = [v for v in streams.values() if len(v) >= 2]
    idx = rng.choice(cands)
    k = rng.randrange(len(idx) - 1)
    out = list(records)
    a, b = idx[k], idx[k + 1]
    out[a], out[b] = out[b], out[a]
    return out


def corrupt_unexpected(records: list[Record], rng: random.Random) -> list[Record]:
    """A message nobody sent, seen by a device."""
    i = rng.choice([i for i in _msgs(records) if not records[i]["ev"]])
    top = max(r["seq"] for r in records if r["t"] in ("msg", "sent")
              and r["conv"] == records[i]["conv"])
    fake = dict(records[i], id="never-sent", body="made up", seq=top + 1)
    j = max(k for k in _msgs(records) if all(records[k][f] == fake[f]
                                             for f in ("dev", "inc", "conv")))
    return [*records[: j + 1], fake, *records[j + 1:]]  # last in its stream: in order


def corrupt_gaps(records: list[Record], rng: random.Random) -> list[Record]:
    """One seq a device had, below a higher one it saw, removed (a chat event if possible,
    so that nothing else notices)."""
    top: dict[tuple[str, str], int] = defaultdict(int)
    for i in _msgs(records):
        r = records[i]
        top[(r["dev"], r["conv"])] = max(top[(r["dev"], r["conv"])], r["seq"])
    cands = [i for i in _msgs(records)
             if records[i]["seq"] < top[(records[i]["dev"], records[i]["conv"])]]
    events = [i for i in cands if records[i]["ev"]]
    r = records[rng.choice(events or cands)]
    return [x for x in records if not (x["t"] == "msg" and x["dev"] == r["dev"]
                                       and x["conv"] == r["conv"] and x["seq"] == r["seq"])]


def corrupt_receipts(records: list[Record], rng: random.Random) -> list[Record]:
    """Every receipt one sender saw for one of its messages removed."""
    acks = [r for r in records if r["t"] == "sent"]
    ack = None
    for ack in rng.sample(acks, len(acks)):
        if any(r["t"] == "rcpt" and r["dev"] == ack["dev"] and r["conv"] == ack["conv"]
               and ack["seq"] in r["seqs"] for r in records):
            break
    assert ack is not None
    out = []
    for r in records:
        if r["t"] == "rcpt" and r["dev"] == ack["dev"] and r["conv"] == ack["conv"]:
            r = dict(r, seqs=[s for s in r["seqs"] if s != ack["seq"]])
            if not r["seqs"]:
                continue
        out.append(r)
    return out


def corrupt_send_order(records: list[Record], rng: random.Random) -> list[Record]:
    """Two sends of one device to one chat made in the other order (their seqs stay)."""
    sends = [i for i, r in enumerate(records) if r["t"] == "send"]
    acked = _acked(records)
    by_chat: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i in sends:
        r = records[i]
        if (_user(r["dev"]), r["id"]) in acked:
            by_chat[(r["dev"], r["conv"])].append(i)
    idx = rng.choice([v for v in by_chat.values() if len(v) >= 2])
    k = rng.randrange(len(idx) - 1)
    out = list(records)
    a, b = idx[k], idx[k + 1]
    out[a], out[b] = out[b], out[a]
    return out


def corrupt_history(records: list[Record], rng: random.Random) -> list[Record]:
    """One acknowledged message missing from the stored history read back."""
    acks = _acked(records)
    out = copy.deepcopy(records)
    hists = [r for r in out if r["t"] == "history" and any(
        (it["from"], it["id"]) in acks for it in r["items"])]
    h = rng.choice(hists)
    items = [k for k, it in enumerate(h["items"]) if (it["from"], it["id"]) in acks]
    del h["items"][rng.choice(items)]
    return out


CORRUPTIONS = {"lost": corrupt_lost, "duplicated": corrupt_duplicated,
               "reordered": corrupt_reordered, "unexpected": corrupt_unexpected,
               "gaps": corrupt_gaps, "receipts": corrupt_receipts, "history": corrupt_history,
               "send_order": corrupt_send_order}


def self_test(records: list[Record], seed: int = 0) -> dict[str, Any]:
    """Check the history (it must pass), then each corruption of it (each must fail, with
    its own kind of violation among those found)."""
    base = check(records)
    out: dict[str, Any] = {"clean_history_passes": base["ok"], "corruptions": {}}
    ok = base["ok"]
    for kind, corrupt in CORRUPTIONS.items():
        bad = check(corrupt(records, random.Random(f"{seed}-{kind}")))
        caught = not bad["ok"] and bad["violations"][kind] > 0
        ok = ok and caught
        out["corruptions"][kind] = {"caught": caught, "violations": {
            k: n for k, n in bad["violations"].items() if n}}
    out["ok"] = ok
    return out


# ---- a small history of a correct system, for the checker's own tests -----------------------

def example_history(seed: int = 0, messages: int = 60) -> list[Record]:
    """What a correct server would let the driver record: six users (one with two devices),
    two one-to-one chats and a group of five (created with an event), messages in order to
    every device, one device restarting its app (so some come again to the new client),
    receipts, and the stored history."""
    rng = random.Random(seed)
    devices = {"u0": ["a", "b"], **{f"u{i}": ["a"] for i in range(1, 6)}}
    convs = {"d:u0:u1": ["u0", "u1"], "d:u2:u3": ["u2", "u3"],
             "g:g1": ["u0", "u1", "u2", "u3", "u4"]}
    recs: list[Record] = [{"t": "setup", "devices": devices, "convs": convs}]
    stored: dict[str, list[Record]] = {c: [] for c in convs}
    stored["g:g1"].append({"seq": 1, "from": "u0", "fdev": "server", "id": "ev-1", "body": "",
                           "ev": True})
    for i in range(messages):
        conv = rng.choice(list(convs))
        user = rng.choice(convs[conv])
        dev = rng.choice(devices[user])
        cid = f"{user}.{dev}.{i}"
        body = f"text {i}"
        recs.append({"t": "send", "dev": f"{user}/{dev}", "id": cid, "conv": conv,
                     "body": body})
        seq = len(stored[conv]) + 1
        recs.append({"t": "sent", "dev": f"{user}/{dev}", "id": cid, "conv": conv, "seq": seq})
        stored[conv].append({"seq": seq, "from": user, "fdev": dev, "id": cid, "body": body,
                             "ev": False})
    state = _State(recs)
    for u, devs in devices.items():
        for d in devs:
            dev = f"{u}/{d}"
            restart = dev == "u1/a"
            stream = [(conv, it) for conv in convs for it in stored[conv]
                      if dev in state.expected_devices(conv, it["from"], it["fdev"])]
            stream.sort(key=lambda x: (x[1]["seq"], x[0]))  # interleaved, each conv in order
            cut = len(stream) // 2
            recs.append({"t": "conn", "dev": dev, "inc": 0, "what": "connected"})
            for k, (conv, it) in enumerate(stream):
                inc = 0
                if restart and k >= cut:
                    inc = 1
                    if k == cut:  # the new client gets a few again
                        recs.append({"t": "conn", "dev": dev, "inc": 1, "what": "connected"})
                        for c2, it2 in stream[cut - 3: cut]:
                            recs.append(_msg(dev, 1, c2, it2))
                recs.append(_msg(dev, inc, conv, it))
            recs.append({"t": "conn", "dev": dev, "inc": 1 if restart else 0, "what": "synced"})
    for conv in convs:
        for it in stored[conv]:
            if it["ev"]:
                continue
            by = next(u for u in convs[conv] if u != it["from"])
            for d in devices[it["from"]]:
                recs.append({"t": "rcpt", "dev": f"{it['from']}/{d}", "inc": 0,
                             "kind": "delivered", "conv": conv, "seqs": [it["seq"]], "by": by})
        recs.append({"t": "history", "conv": conv, "items": list(reversed(stored[conv]))})
    return recs


def _msg(dev: str, inc: int, conv: str, it: Record) -> Record:
    return {"t": "msg", "dev": dev, "inc": inc, "conv": conv, "seq": it["seq"],
            "from": it["from"], "fdev": it["fdev"], "id": it["id"], "body": it["body"],
            "ev": it["ev"]}
