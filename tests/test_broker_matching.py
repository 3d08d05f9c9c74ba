"""The embedded broker's wildcard index gives exactly MQTT's matching (property test)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.protocol.matching import FilterTrie, topic_matches

LEVEL = st.sampled_from(["a", "b", "c", "$SYS", ""])
topics = st.lists(LEVEL, min_size=1, max_size=5).map("/".join)


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.sampled_from(["a", "b", "c", "$SYS", "", "+"]), min_size=1, max_size=5))
    if draw(st.booleans()):
        levels = [*levels[:-1], "#"] if draw(st.booleans()) else [*levels, "#"]
    return "/".join(levels)


@settings(max_examples=300, deadline=None)
@given(st.sets(filters(), max_size=25), st.lists(topics, min_size=1, max_size=20), st.data())
def test_trie_matches_like_topic_matches(fs: set[str], ts: list[str], data: st.DataObject) -> None:
    trie = FilterTrie()
    for f in fs:
        trie.add(f)
    removed = data.draw(st.sets(st.sampled_from(sorted(fs)), max_size=len(fs))) if fs else set()
    for f in removed:
        trie.discard(f)
    live = fs - removed
    assert len(trie) == len(live)
    for t in ts:
        assert sorted(trie.match(t)) == sorted(f for f in live if topic_matches(f, t)), t
