"""Tag-editor operations are exact."""
from __future__ import annotations

from collections import Counter

from engine.data.tags import (
    add_front,
    apply_to_captions,
    dedupe,
    remove,
    replace,
    sort_by_frequency,
    split_tags,
    tag_frequency,
)


def test_ops_are_exact():
    tags = split_tags(" 1girl,  red hair ,smile,, 1girl , outdoors")
    assert tags == ["1girl", "red hair", "smile", "1girl", "outdoors"]
    assert dedupe(tags) == ["1girl", "red hair", "smile", "outdoors"]
    assert add_front("zkz")(tags)[:2] == ["zkz", "1girl"]
    assert add_front("smile")(["a", "smile", "b"]) == ["smile", "a", "b"]
    assert remove("smile", "outdoors")(tags) == ["1girl", "red hair", "1girl"]
    assert replace("red hair", "blue hair")(tags)[1] == "blue hair"
    freq = Counter({"b": 5, "c": 5, "a": 1})
    assert sort_by_frequency(freq, keep_first=1)(["zkz", "a", "c", "b"]) == ["zkz", "b", "c", "a"]


def test_frequency_counts_each_tag_once_per_caption():
    assert tag_frequency(["a, b, a", "b, c"]) == Counter({"b": 2, "a": 1, "c": 1})


def test_apply_writes_only_changed_files(tmp_path):
    one, two = tmp_path / "1.txt", tmp_path / "2.txt"
    one.write_text("smile, 1girl")
    two.write_text("zkz, 1girl")
    changed = apply_to_captions([one, two], add_front("zkz"), dedupe)
    assert changed == 1
    assert one.read_text() == "zkz, smile, 1girl" and two.read_text() == "zkz, 1girl"
