"""Text views: what a training step sees of a report. Evaluation always uses the whole text.

sentence  ConVIRT's: one random sentence per step
span      a random run of consecutive sentences covering at least half of the report: varied like the
          sentence view, but it keeps the finding far more often (a report's boilerplate sentences carry none)
report    the whole text
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable

_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")


def split_sentences(text: str, min_chars: int = 3) -> list[str]:
    """Sentences of a report (very short fragments such as '1.' dropped)."""
    parts = [s.strip() for s in _SENTENCE_END.split(text)]
    kept = [s for s in parts if len(s) >= min_chars and any(c.isalpha() for c in s)]
    return kept or [text.strip()]


def sample_sentence(text: str, rng: random.Random) -> str:
    return rng.choice(split_sentences(text))


def sample_span(text: str, rng: random.Random, min_fraction: float = 0.5) -> str:
    """A run of consecutive sentences: length uniform in [ceil(min_fraction * n), n], start uniform."""
    sents = split_sentences(text)
    n = len(sents)
    length = rng.randint(max(1, math.ceil(min_fraction * n)), n)
    start = rng.randint(0, n - length)
    return " ".join(sents[start:start + length])


def text_view(text: str, view: str, rng: random.Random) -> str:
    if view == "sentence":
        return sample_sentence(text, rng)
    if view == "span":
        return sample_span(text, rng)
    if view == "report":
        return text
    raise ValueError(f"unknown text view {view!r}")


# Headings of radiology report templates (MIMIC-CXR, IU X-ray, most hospitals'). A section runs from its heading
# to the next known one; `--sections findings,impression` keeps those, as image-text work on MIMIC-CXR usually
# does, and drops the indication, history and technique that say nothing about the image.
REPORT_HEADINGS = (
    "examination", "exam", "indication", "indications", "history", "clinical history", "clinical information",
    "reason for exam", "reason for examination", "technique", "procedure", "comparison", "comparisons", "findings",
    "impression", "impressions", "conclusion", "conclusions", "recommendation", "recommendations", "notification",
    "wet read", "addendum", "opinion", "summary",
)


def _heading_pattern(names: tuple[str, ...]) -> re.Pattern[str]:
    alts = "|".join(sorted((re.escape(n).replace(r"\ ", r"\s+") for n in names), key=len, reverse=True))
    return re.compile(rf"(?:^|(?<=[\s.]))({alts})\s*:", re.IGNORECASE | re.MULTILINE)


def report_sections(text: str, names: list[str] | tuple[str, ...]) -> str:
    """The named sections of a report, in the report's order, headings dropped; '' when it has none of them."""
    wanted = {" ".join(n.lower().split()) for n in names}
    pattern = _heading_pattern(tuple(dict.fromkeys((*REPORT_HEADINGS, *wanted))))
    marks = list(pattern.finditer(text))
    return join_parts(text[m.end():nxt.start() if nxt else len(text)]
                      for m, nxt in zip(marks, [*marks[1:], None]) if " ".join(m.group(1).lower().split()) in wanted)


def join_parts(parts: Iterable[str | None]) -> str:
    """Report parts as one text, each closed with a full stop so sentence views still see where one ends."""
    kept = [p.strip() for p in parts if p and p.strip()]
    return " ".join(p if p[-1] in ".!?" else p + "." for p in kept)
