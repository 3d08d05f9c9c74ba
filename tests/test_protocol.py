"""Topics from identities, the envelope codec, sequence tracking, liveness with birth counters."""

from __future__ import annotations

import pytest

from orchestrator.errors import ProtocolError, UnknownResource, from_wire
from orchestrator.protocol.codec import Envelope, SeqTracker, Sequencer, decode, encode
from orchestrator.protocol.messages import PartState, PartStateName, StopReport, TimelineEntry
from orchestrator.protocol.topics import PartId, Topics, topic_matches
from orchestrator.runtime.liveness import Liveness


def test_topics_carry_the_publisher_identity() -> None:
    t = Topics("rover")
    assert t.part_state("arm") == "orc/v1/rover/part/arm/state"
    assert t.part_control("main", "arm") == "orc/v1/rover/part/main/ctl/arm"
    assert t.part_of(t.part_report("arm")) == "arm"
    assert t.client_of(t.client_shutdown("cli-1")) == "cli-1"
    assert topic_matches(t.all_part_states(), t.part_state("x"))
    assert not topic_matches(t.all_part_states(), t.part_heartbeat("x"))


@pytest.mark.parametrize("bad", ["", "a/b", "a+b", "#", "a b", "x" * 65])
def test_identities_refuse_names_that_break_topics(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        PartId("rover", bad)


@pytest.mark.parametrize(
    ("f", "t", "ok"),
    [("a/+", "a/b", True), ("a/+", "a/b/c", False), ("a/#", "a", True), ("a/#", "a/b/c", True),
     ("+/b", "a/b", True), ("#", "$SYS/x", False), ("a/b", "a/b", True), ("a/+/c", "a/b/d", False)],
)
def test_topic_matching(f: str, t: str, ok: bool) -> None:
    assert topic_matches(f, t) is ok


def test_envelope_round_trip_with_nested_models() -> None:
    rep = StopReport(began_at=1.0, stopped_at=2.0, resources_stopped=["m"],
                     children=[TimelineEntry(part="x", forced=True)])
    env = decode(encode("part/a", rep, birth=7, seq=3))
    assert (env.src, env.birth, env.seq) == ("part/a", 7, 3)
    back = env.parse(StopReport)
    assert back.children[0].forced and back.resources_stopped == ["m"]


@pytest.mark.parametrize("payload", [b"", b"\xc1", b"\x93\x01\x02\x03", b"\x81\xa3foo\x01"])
def test_malformed_payloads_raise_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(payload)


def test_wrong_protocol_version_is_refused() -> None:
    from orchestrator.protocol.codec import pack

    with pytest.raises(ProtocolError, match="protocol version 9"):
        decode(pack({"v": 9, "src": "part/a", "body": {}}))


def test_body_validation_error_is_protocol_error() -> None:
    env = decode(encode("part/a", {"state": "flying"}))
    with pytest.raises(ProtocolError, match="PartState"):
        env.parse(PartState)


def test_sequence_gaps_and_duplicates() -> None:
    seq, tr = Sequencer(), SeqTracker()

    def env(birth: int, s: int) -> Envelope:
        return Envelope(src="part/a", birth=birth, seq=s)

    assert [tr.observe(env(1, seq.next())) for _ in range(3)] == ["ok", "ok", "ok"]
    assert tr.observe(env(1, 1)) == "duplicate"
    assert tr.observe(env(1, 5)) == "gap"
    assert tr.observe(env(2, 0)) == "ok"  # a new birth restarts the count
    assert tr.observe(env(1, 6)) == "stale"
    assert (tr.gaps, tr.duplicates) == (1, 1)


def test_errors_cross_the_wire_as_the_same_type() -> None:
    err = from_wire(UnknownResource("no such resource 'x'", part="a").to_wire())
    assert isinstance(err, UnknownResource) and err.details == {"part": "a"}


def _state(birth: int, state: PartStateName) -> tuple[Envelope, PartState]:
    return Envelope(src="part/a", birth=birth), PartState(state=state, heartbeat_s=0.1)


def test_late_will_of_an_old_connection_is_ignored() -> None:
    changes: list[tuple[str, bool]] = []
    lv = Liveness([("a", 0.1, 3)], listener=lambda p, new, old: changes.append((new.state, new.online)))
    lv.on_state("a", *_state(100, PartStateName.RUNNING), now=0.0)
    lv.on_state("a", *_state(200, PartStateName.RUNNING), now=1.0)  # restarted: a newer birth
    assert lv.on_state("a", *_state(100, PartStateName.OFFLINE), now=1.1) is False  # old Will, late
    assert lv.status("a").online and lv.status("a").birth == 200
    lv.on_state("a", *_state(200, PartStateName.OFFLINE), now=1.2)  # the live connection's own Will
    assert not lv.status("a").online


def test_heartbeat_timeout_and_recovery() -> None:
    lv = Liveness([("a", 0.1, 3)])
    lv.on_state("a", *_state(5, PartStateName.RUNNING), now=0.0)
    assert lv.check_timeouts(now=0.25) == []
    assert lv.check_timeouts(now=0.31) == ["a"]
    assert not lv.status("a").online and lv.status("a").reason == "heartbeat timeout"
    lv.on_heartbeat("a", 5, now=0.5)  # it thawed
    assert lv.status("a").online
    lv.on_heartbeat("a", 4, now=0.6)  # stale birth: ignored
    assert lv.ignored_stale == 1


def test_check_value_refuses_exactly_what_a_plain_recursive_walk_refuses() -> None:
    """check_value checks the plain values of a map or a list where it meets them (every message comes
    through it: it was most of the cost of reading a heartbeat); a seeded set of values, hostile ones
    included (non-finite numbers as values and as keys, long strings and keys, tuples as keys, deep and
    wide nesting), is judged as a plain recursive walk of the rules judges it."""
    import math
    import random

    from orchestrator.protocol.codec import MAX_DEPTH, MAX_ITEMS, MAX_STR, check_value

    def refused(v: object, depth: int, count: list[int]) -> bool:
        if isinstance(v, float):
            return not math.isfinite(v)
        if isinstance(v, str | bytes | bytearray):
            return len(v) > MAX_STR
        if isinstance(v, dict | list | tuple):
            count[0] += len(v)
            if depth >= MAX_DEPTH or count[0] > MAX_ITEMS:
                return True
            kids = [*v.values(), *v.keys()] if isinstance(v, dict) else list(v)
            return any(refused(x, depth + 1, count) for x in kids)
        return False

    rnd = random.Random(7)
    leaves = [1, True, None, "ab", b"b", bytearray(b"z"), 1.5, -0.0, float("nan"), float("inf"), -float("inf"),
              "y" * (MAX_STR + 1), 2**70]

    def gen(d: int) -> object:
        r = rnd.random()
        if d > MAX_DEPTH + 2 or r < 0.35 + d * 0.03:
            return rnd.choice(leaves)
        if r < 0.7:
            keys = ["a", "b", 1, 2.5, (1, 2), float("nan"), "k" * (MAX_STR + 1)]
            return {rnd.choice(keys): gen(d + 1) for _ in range(rnd.randint(0, 4))}
        if r < 0.8:
            return tuple(gen(d + 1) for _ in range(rnd.randint(0, 4)))
        return [gen(d + 1) for _ in range(rnd.randint(0, 4))]

    def deep(n: int) -> list[object]:
        top: list[object] = []
        x = top
        for _ in range(n):
            x.append([])
            x = x[0]  # type: ignore[assignment]
        return top

    values = [gen(rnd.choice([0, 10, 20, 30, 31, 32])) for _ in range(3000)]
    values += [[0] * MAX_ITEMS, [0] * (MAX_ITEMS + 1), deep(MAX_DEPTH - 1), deep(MAX_DEPTH), {"a": {"b": [1.0, 2]}}]
    outcomes = set()
    for v in values:
        expected = refused(v, 0, [0])
        try:
            check_value(v)
            got = False
        except ProtocolError:
            got = True
        assert got == expected, v
        outcomes.add(got)
    assert outcomes == {True, False}
