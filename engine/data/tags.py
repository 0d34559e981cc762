"""Tag-editor operations over a whole dataset's captions (comma-separated tags).

Each operation is a pure function on a list of tags, applied to every caption by
:func:`apply_to_captions`, which writes the caption files atomically and only when they change.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

from engine.fileio import atomic_write_bytes

Op = Callable[[list[str]], list[str]]


def split_tags(caption: str) -> list[str]:
    return [t.strip() for t in caption.split(",") if t.strip()]


def join_tags(tags: Iterable[str]) -> str:
    return ", ".join(tags)


def add_front(trigger: str) -> Op:
    """Put ``trigger`` first (moving it if already present), the usual keep_tokens=1 layout."""
    def op(tags: list[str]) -> list[str]:
        return [trigger] + [t for t in tags if t != trigger]
    return op


def remove(*unwanted: str) -> Op:
    drop = set(unwanted)
    return lambda tags: [t for t in tags if t not in drop]


def replace(old: str, new: str) -> Op:
    return lambda tags: [new if t == old else t for t in tags]


def dedupe(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(tags))


def sort_by_frequency(freq: Counter, keep_first: int = 0) -> Op:
    """Most common tags first (ties alphabetical), leaving the first ``keep_first`` in place."""
    def op(tags: list[str]) -> list[str]:
        head, rest = tags[:keep_first], tags[keep_first:]
        return head + sorted(rest, key=lambda t: (-freq[t], t))
    return op


def tag_frequency(captions: Iterable[str]) -> Counter:
    counts: Counter = Counter()
    for cap in captions:
        counts.update(dict.fromkeys(split_tags(cap), 1))  # count each tag once per caption
    return counts


def apply_to_captions(caption_files: list[Path], *ops: Op) -> int:
    """Apply ``ops`` in order to every caption file; returns how many files changed."""
    changed = 0
    for path in caption_files:
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        tags = split_tags(old)
        for op in ops:
            tags = op(tags)
        new = join_tags(tags)
        if new != old.strip():
            atomic_write_bytes(path, new.encode("utf-8"))
            changed += 1
    return changed
