"""Answer matchers for closed-form answers (classification, RSVQA-LR, VRSBench, the synthetic benchmark).

- ``contains_match``: RSEvalKit's rule (VHM evaluation toolkit): lower-case, remove all spaces, correct when the
  prediction is contained in the answer. RSEvalKit counts an empty prediction as correct (``"" in answer`` is true);
  here an empty prediction is never correct, and ``classification_scores`` reports how many there were.
- ``exact_match``: both sides through ``normalize_answer`` (lower-case, whitespace collapsed, trailing punctuation and
  quotes removed), then equal.
- ``lenient_match``: a re-implementation of the MF-RSVLM authors' permissive VRSBench matcher
  (``scripts/evaluate_vrsbench_metrics.py`` in ``Yunkaidang/RSVLM``): equality, equality without spaces, substring
  either way, answer tokens a subset of prediction tokens, equal numbers with number words (``"three" == "3"``),
  yes/no synonyms (``"true"``, ``"correct"``, ``"present"`` ... / ``"false"``, ``"absent"``, ``"none"`` ...), colour
  modifiers ignored, and any shared token for the open-ended types. It inflates accuracy relative to the official rule;
  results produced with it are labelled ``lenient``. One deliberate difference: the authors' code counts an empty
  prediction as correct (``"" in answer``); here it is never correct.
"""

from collections.abc import Iterable, Mapping
from typing import Any

from rsfuse.eval.text import NUMBER_WORDS, normalize_answer, squash_spaces, word_tokens

__all__ = [
    "LENIENT_SHARED_TOKEN_TYPES",
    "classification_scores",
    "contains_match",
    "exact_match",
    "is_empty_prediction",
    "lenient_match",
    "record_field",
]

YES_WORDS = frozenset({"yes", "y", "true", "correct", "present", "exists"})
NO_WORDS = frozenset({"no", "n", "false", "absent", "none", "cannot"})
COLOR_MODIFIERS = frozenset({"light", "dark", "medium", "bright", "very", "pale"})
# Question types for which the authors' matcher accepts any shared token.
LENIENT_SHARED_TOKEN_TYPES = frozenset(
    {
        "object position",
        "object category",
        "object shape",
        "object direction",
        "rural or urban",
        "scene type",
        "image",
    }
)


def is_empty_prediction(prediction: str) -> bool:
    """True when the prediction is empty after removing whitespace (and trailing punctuation)."""
    return not normalize_answer(prediction)


def contains_match(pred: str, answer: str) -> bool:
    """RSEvalKit rule: ``squash(pred) in squash(answer)`` with ``squash`` = lower-case, spaces removed.

    An empty prediction (after removing whitespace) is not correct.
    """
    squashed_prediction = squash_spaces(pred)
    return bool(squashed_prediction) and squashed_prediction in squash_spaces(answer)


def exact_match(pred: str, answer: str) -> bool:
    """``normalize_answer(pred) == normalize_answer(answer)``; an empty prediction is not correct."""
    normalized_prediction = normalize_answer(pred)
    return bool(normalized_prediction) and normalized_prediction == normalize_answer(answer)


def _numbers(tokens: list[str]) -> list[int]:
    return [
        int(token) if token.isdigit() else NUMBER_WORDS[token]
        for token in tokens
        if token.isdigit() or token in NUMBER_WORDS
    ]


def _yes_no(tokens: list[str]) -> bool | None:
    if any(token in YES_WORDS for token in tokens):
        return True
    if any(token in NO_WORDS for token in tokens):
        return False
    return None


def lenient_match(pred: str, answer: str, question_type: str | None = None) -> bool:
    """The authors' permissive matcher (see the module docstring); ``question_type`` enables per-type rules."""
    prediction_text = " ".join(str(pred).lower().split())
    answer_text = " ".join(str(answer).lower().split())
    if not answer_text or not prediction_text:
        return False
    if prediction_text == answer_text or prediction_text.replace(" ", "") == answer_text.replace(" ", ""):
        return True
    if answer_text in prediction_text or prediction_text in answer_text:
        return True
    prediction_tokens = word_tokens(prediction_text)
    answer_tokens = word_tokens(answer_text)
    prediction_set = set(prediction_tokens)
    if answer_tokens and set(answer_tokens) <= prediction_set:
        return True
    answer_numbers = _numbers(answer_tokens)
    prediction_numbers = _numbers(prediction_tokens)
    if answer_numbers and answer_numbers == prediction_numbers:
        return True
    answer_bool, prediction_bool = _yes_no(answer_tokens), _yes_no(prediction_tokens)
    if answer_bool is not None and answer_bool == prediction_bool:
        return True
    kind = (question_type or "").strip().lower()
    if kind == "object color":
        base_colours = [token for token in answer_tokens if token not in COLOR_MODIFIERS]
        if any(token in prediction_set for token in base_colours):
            return True
    if kind in LENIENT_SHARED_TOKEN_TYPES and any(token in prediction_set for token in answer_tokens):
        return True
    return False


def record_field(record: Mapping[str, Any], names: tuple[str, ...], *, index: int, what: str) -> Any:
    """The first present key of ``names`` in ``record``; a clear error naming the record and keys otherwise."""
    for name in names:
        if name in record and record[name] is not None:
            return record[name]
    raise KeyError(f"record {index} ({record.get('id', 'no id')}): missing {what} (expected one of {list(names)})")


def classification_scores(records: Iterable[Mapping[str, Any]]) -> dict:
    """Accuracy under the RSEvalKit contains rule and under exact match, plus the number of empty predictions.

    Each record carries ``prediction`` and ``answer``. Values are fractions in [0, 1].
    """
    total = contains_correct = exact_correct = empty = 0
    for index, record in enumerate(records):
        prediction = str(record_field(record, ("prediction", "pred"), index=index, what="prediction"))
        answer = str(record_field(record, ("answer", "ground_truth", "label"), index=index, what="answer"))
        total += 1
        empty += is_empty_prediction(prediction)
        contains_correct += contains_match(prediction, answer)
        exact_correct += exact_match(prediction, answer)
    if total == 0:
        raise ValueError("classification_scores: no records")
    return {
        "protocol": "classification (RSEvalKit contains rule; exact match)",
        "contains_accuracy": contains_correct / total,
        "exact_accuracy": exact_correct / total,
        "empty_predictions": empty,
        "total": total,
        "notes": {
            "contains_accuracy": "lower-case, spaces removed, prediction contained in answer (RSEvalKit); "
            "empty predictions count as wrong (RSEvalKit would count them right)",
            "exact_accuracy": "lower-case, whitespace collapsed, trailing punctuation removed, then equal",
        },
    }
