"""Train-time caption transforms, as kohya users know them: shuffle, keep_tokens, dropout."""
from __future__ import annotations

import random


def process_caption(caption: str, rng: random.Random, shuffle: bool = False, keep_tokens: int = 0,
                    dropout_rate: float = 0.0) -> str:
    """Return the caption the model sees this step.

    ``keep_tokens`` leading comma-separated tags (usually the trigger word) stay in front when
    shuffling; ``dropout_rate`` is the chance to train on the empty caption (helps CFG).
    """
    if dropout_rate > 0 and rng.random() < dropout_rate:
        return ""
    if not shuffle:
        return caption
    tags = [t.strip() for t in caption.split(",") if t.strip()]
    fixed, rest = tags[:keep_tokens], tags[keep_tokens:]
    rng.shuffle(rest)
    return ", ".join(fixed + rest)
