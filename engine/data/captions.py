"""Train-time caption transforms, as kohya users know them: shuffle, keep_tokens, dropout."""
from __future__ import annotations

import random


def process_caption(caption: str, rng: random.Random, shuffle: bool = False, keep_tokens: int = 0,
                    dropout_rate: float = 0.0, tag_dropout_rate: float = 0.0) -> str:
    """Return the caption the model sees this step.

    ``keep_tokens`` leading comma-separated tags (usually the trigger word) stay in front and are
    never dropped; ``dropout_rate`` is the chance to train on the empty caption (helps CFG);
    ``tag_dropout_rate`` drops each other tag independently (so no single tag carries the look).
    """
    if dropout_rate > 0 and rng.random() < dropout_rate:
        return ""
    if not shuffle and tag_dropout_rate <= 0:
        return caption
    tags = [t.strip() for t in caption.split(",") if t.strip()]
    fixed, rest = tags[:keep_tokens], tags[keep_tokens:]
    if shuffle:
        rng.shuffle(rest)
    if tag_dropout_rate > 0:
        rest = [t for t in rest if rng.random() >= tag_dropout_rate]
    return ", ".join(fixed + rest)


def caption_is_fixed(shuffle: bool, dropout_rate: float, tag_dropout_rate: float) -> bool:
    """True when every step sees an image's caption unchanged, so text-encoder outputs can be
    computed once and cached."""
    return not shuffle and dropout_rate == 0 and tag_dropout_rate == 0
