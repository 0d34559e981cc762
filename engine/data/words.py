"""Whole words in prompts and captions: the trigger word found, replaced or taken out.

One rule for every place that looks for a trigger (the Compare tab's control prompt, the model
card's sample prompts, Textual Inversion's token expansion, prior-preservation captions): a word
counts only where no letter, digit or underscore touches it, so "zkz" is not found in "zkzstar".
"""
from __future__ import annotations

import re


def trigger_words(phrase: str | None) -> list[str]:
    """A trigger phrase as users write it and the card lists it: comma-separated words."""
    return [w.strip() for w in (phrase or "").split(",") if w.strip()]


def word_pattern(word: str, not_after: str = r"\w") -> re.Pattern[str]:
    """``word`` as a whole word; ``not_after`` is the character class that may not precede it."""
    return re.compile(rf"(?<![{not_after.strip('[]')}]){re.escape(word.strip())}(?!\w)")


def has_word(text: str, word: str) -> bool:
    return bool(word.strip()) and word_pattern(word).search(text) is not None


def replace_word(text: str, word: str, by: str, count: int = 0, not_after: str = r"\w") -> str:
    return word_pattern(word, not_after).sub(lambda _m: by, text, count=count)


def without_word(text: str, word: str) -> str:
    """``text`` with every whole ``word`` taken out and the commas left behind tidied
    ("zkz, a star" -> "a star"). Unchanged when the word is absent or empty."""
    if not word.strip():
        return text
    out = replace_word(text, word, "")
    if out == text:
        return text
    out = re.sub(r"\s*,\s*(,\s*)+", ", ", out)
    return re.sub(r"\s{2,}", " ", out).strip(" ,")


def without_words(text: str, words: list[str]) -> str:
    """``text`` with each of ``words`` taken out (see ``without_word``)."""
    for word in words:
        text = without_word(text, word)
    return text
