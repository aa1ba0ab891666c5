"""What kind of question a scene question is, and what a tile's answer says.

The wording rule (`infer_kind`, used when no kind is given), first match wins, on the lower-cased question:

1. **grounding** — it starts with ``{VG}``, or holds ``where is``, ``where are``, ``locate``, ``bounding box``,
   ``detect``, ``find all`` or ``mark``;
2. **count** — it holds ``how many``, ``number of`` or starts with ``count``;
3. **existence** — it starts with ``is there``, ``are there``, ``is any``, ``are any``, ``does``, ``do``, ``can
   you see``, ``is a``, ``is an``;
4. otherwise **free-form**.

Reading an answer: existence → yes / no (the first yes- or no-word, as the evaluation's lenient matcher reads
them), else undecided; count → the first number (digits or a number word), else unparsed; grounding (and any
answer) → every ``[x1, y1, x2, y2]`` box on the 0–1000 scale.
"""

import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from rsfuse.eval.matching import NO_WORDS, YES_WORDS
from rsfuse.eval.text import NUMBER_WORDS, word_tokens

__all__ = ["KINDS", "Kind", "ParsedAnswer", "infer_kind", "parse_answer"]

Kind = Literal["existence", "count", "grounding", "free-form"]
KINDS: tuple[str, ...] = get_args(Kind)

_GROUNDING = ("where is", "where are", "locate", "bounding box", "detect", "find all", "mark ")
_COUNT = ("how many", "number of")
_EXISTENCE = ("is there", "are there", "is any", "are any", "does ", "do ", "can you see", "is a ", "is an ")
_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(r"\[" + ",".join([_NUMBER] * 4) + r"\]")


def infer_kind(question: str) -> str:
    """The kind of ``question`` by the module's wording rule."""
    text = " ".join(question.lower().split())
    if text.startswith("{vg}") or any(phrase in text for phrase in _GROUNDING):
        return "grounding"
    if any(phrase in text for phrase in _COUNT) or text.startswith("count"):
        return "count"
    if text.startswith(_EXISTENCE):
        return "existence"
    return "free-form"


@dataclass(frozen=True)
class ParsedAnswer:
    """``present`` (existence; None = undecided), ``count`` (None = no number), ``boxes`` (0–1000 scale)."""

    present: bool | None = None
    count: int | None = None
    boxes: tuple[tuple[float, float, float, float], ...] = field(default_factory=tuple)


def parse_answer(text: str, kind: str) -> ParsedAnswer:
    boxes = tuple(tuple(float(value) for value in match.groups()) for match in _BOX.finditer(text))
    boxes = tuple(box for box in boxes if all(0.0 <= value <= 1000.0 for value in box))
    without_boxes = _BOX.sub(" ", text)
    tokens = word_tokens(without_boxes)
    present = count = None
    if kind == "existence":
        for token in tokens:
            if token in YES_WORDS or token in NO_WORDS:
                present = token in YES_WORDS
                break
    if kind == "count":
        for token in tokens:
            if token.isdigit():
                count = int(token)
                break
            if token in NUMBER_WORDS:
                count = NUMBER_WORDS[token]
                break
    return ParsedAnswer(present=present, count=count, boxes=boxes)  # type: ignore[arg-type]
