"""Text views: ConVIRT samples one sentence of the report per step; evaluation uses the whole text."""

from __future__ import annotations

import random
import re

_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")


def split_sentences(text: str, min_chars: int = 3) -> list[str]:
    """Sentences of a report (very short fragments such as '1.' dropped)."""
    parts = [s.strip() for s in _SENTENCE_END.split(text)]
    kept = [s for s in parts if len(s) >= min_chars and any(c.isalpha() for c in s)]
    return kept or [text.strip()]


def sample_sentence(text: str, rng: random.Random) -> str:
    return rng.choice(split_sentences(text))
