"""VQA scoring: VRSBench (official rule with a pluggable judge, or the authors' lenient matcher), RSVQA-LR and the
project's synthetic benchmark. All accuracies are fractions in [0, 1]; every result names its protocol.

VRSBench official rule (``lx709/VRSBench``, ``eval_vqa_gpt.ipynb``), after lower-casing both sides:
1. ground truth contained in the prediction -> correct;
2. else, if the ground truth is ``yes``/``no`` or an integer 0-99 -> correct only on exact match;
3. else an LLM judge decides (``judge(question, answer, prediction) -> bool``). Without a judge these answers are
   *undecided*: per type and for the average we report a lower bound (undecided = wrong) and an upper bound
   (undecided = right), and ``avg`` is ``None``.
Score = mean of per-type accuracies (``avg``).

Containment choice: the reference script checks the raw substring ``gt in pred``, which accepts ``"no"`` inside
``"north"`` or ``"2"`` inside ``"12"``. The default here is ``containment="word"`` (the ground truth must occur as a
whole phrase, delimited by non-word characters); ``containment="substring"`` reproduces the reference exactly.
Both sides are normalised with ``normalize_answer`` (lower-case, whitespace collapsed, trailing punctuation removed);
the reference only lower-cases, so its exact-match branch rejects ``"Yes."`` where this one accepts it.
"""

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from rsfuse.eval.matching import contains_match, exact_match, is_empty_prediction, lenient_match, record_field
from rsfuse.eval.text import contains_phrase, normalize_answer

__all__ = [
    "RSVQA_LR_TYPES",
    "VRSBENCH_REFERENCE_TYPE_ALIASES",
    "Judge",
    "rsvqa_lr_scores",
    "synthetic_scores",
    "vrsbench_official_decision",
    "vrsbench_vqa_score",
]

Judge = Callable[[str, str, str], bool]

EXACT_ANSWERS = frozenset(["yes", "no", *map(str, range(100))])
# The VRSBench reference notebook folds these types into "scene type" before averaging (optional here).
VRSBENCH_REFERENCE_TYPE_ALIASES: dict[str, str] = {"image": "scene type", "rural or urban": "scene type"}
# RSVQA-LR question types as stored in the release ("comp") mapped to the names used in papers.
RSVQA_LR_TYPE_NAMES: dict[str, str] = {"comp": "comparison", "comparison": "comparison", "presence": "presence",
                                        "rural_urban": "rural_urban", "count": "count"}
RSVQA_LR_TYPES = ("presence", "comparison", "rural_urban")


def vrsbench_official_decision(
    answer: str, prediction: str, *, containment: Literal["word", "substring"] = "word"
) -> bool | None:
    """Steps 1-2 of the official rule: ``True``/``False``, or ``None`` when a judge must decide."""
    normalized_answer = normalize_answer(answer)
    normalized_prediction = normalize_answer(prediction)
    if not normalized_prediction:
        return False
    if containment == "word":
        contained = contains_phrase(normalized_prediction, normalized_answer)
    elif containment == "substring":
        contained = bool(normalized_answer) and normalized_answer in normalized_prediction
    else:
        raise ValueError(f"containment must be 'word' or 'substring', got {containment!r}")
    if contained:
        return True
    if normalized_answer in EXACT_ANSWERS:
        return normalized_prediction == normalized_answer
    return None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _per_type_table(outcomes: dict[str, list[bool | None]]) -> dict[str, dict[str, Any]]:
    table = {}
    for kind in sorted(outcomes):
        decisions = outcomes[kind]
        correct = sum(decision is True for decision in decisions)
        undecided = sum(decision is None for decision in decisions)
        total = len(decisions)
        table[kind] = {
            "accuracy": correct / total if undecided == 0 else None,
            "lower": correct / total,
            "upper": (correct + undecided) / total,
            "correct": correct,
            "undecided": undecided,
            "total": total,
        }
    return table


def vrsbench_vqa_score(
    records: Iterable[Mapping[str, Any]],
    protocol: Literal["official", "lenient"] = "official",
    judge: Judge | None = None,
    *,
    containment: Literal["word", "substring"] = "word",
    type_aliases: Mapping[str, str] | None = None,
) -> dict:
    """Score VRSBench VQA records (``type``, ``answer``, ``prediction``, optional ``question`` for the judge).

    Returns ``{"protocol", "avg", "avg_lower", "avg_upper", "undecided", "empty_predictions", "total", "per_type",
    "notes"}``; ``per_type[t]`` holds ``accuracy`` (``None`` while undecided answers remain), ``lower``, ``upper``,
    ``correct``, ``undecided``, ``total``. ``type_aliases`` renames types before grouping (e.g.
    ``VRSBENCH_REFERENCE_TYPE_ALIASES``).
    """
    if protocol not in ("official", "lenient"):
        raise ValueError(f"protocol must be 'official' or 'lenient', got {protocol!r}")
    aliases = {key.lower(): value for key, value in (type_aliases or {}).items()}
    outcomes: dict[str, list[bool | None]] = {}
    empty = judged = 0
    for index, record in enumerate(records):
        answer = str(record_field(record, ("answer", "ground_truth"), index=index, what="answer"))
        prediction = str(record_field(record, ("prediction", "predicted", "pred"), index=index, what="prediction"))
        kind = str(record_field(record, ("type", "question_type"), index=index, what="type")).strip().lower()
        kind = aliases.get(kind, kind)
        empty += is_empty_prediction(prediction)
        if protocol == "lenient":
            decision: bool | None = lenient_match(prediction, answer, kind)
        else:
            decision = vrsbench_official_decision(answer, prediction, containment=containment)
            if decision is None and judge is not None:
                decision = bool(judge(str(record.get("question", "")), answer, prediction))
                judged += 1
        outcomes.setdefault(kind, []).append(decision)
    if not outcomes:
        raise ValueError("vrsbench_vqa_score: no records")
    per_type = _per_type_table(outcomes)
    undecided = sum(row["undecided"] for row in per_type.values())
    if protocol == "lenient":
        name = "vrsbench-lenient (authors' permissive matcher; not the official rule)"
    else:
        name = f"vrsbench-official ({containment} containment, " + (
            "LLM judge for open answers)" if judge is not None else "no judge: open answers undecided)"
        )
    avg_lower = _mean([row["lower"] for row in per_type.values()])
    avg_upper = _mean([row["upper"] for row in per_type.values()])
    return {
        "protocol": name,
        "avg": avg_lower if undecided == 0 else None,
        "avg_lower": avg_lower,
        "avg_upper": avg_upper,
        "undecided": undecided,
        "judged": judged,
        "empty_predictions": empty,
        "total": sum(row["total"] for row in per_type.values()),
        "per_type": per_type,
        "notes": {
            "avg": "mean of per-type accuracies; None while undecided answers remain (see avg_lower/avg_upper)",
            "avg_lower": "undecided answers counted wrong",
            "avg_upper": "undecided answers counted right",
        },
    }


def _typed_two_rule_scores(
    records: Iterable[Mapping[str, Any]], *, type_of: Callable[[int, Mapping[str, Any]], str | None]
) -> tuple[dict[str, dict[str, Any]], int, int]:
    rows: dict[str, dict[str, Any]] = {}
    empty = skipped = 0
    for index, record in enumerate(records):
        kind = type_of(index, record)
        if kind is None:
            skipped += 1
            continue
        answer = str(record_field(record, ("answer", "ground_truth"), index=index, what="answer"))
        prediction = str(record_field(record, ("prediction", "pred"), index=index, what="prediction"))
        empty += is_empty_prediction(prediction)
        row = rows.setdefault(kind, {"contains": 0, "exact": 0, "total": 0})
        row["contains"] += contains_match(prediction, answer)
        row["exact"] += exact_match(prediction, answer)
        row["total"] += 1
    table = {
        kind: {
            "contains_accuracy": row["contains"] / row["total"],
            "exact_accuracy": row["exact"] / row["total"],
            "total": row["total"],
        }
        for kind, row in sorted(rows.items())
    }
    return table, empty, skipped


def _averages(table: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    return {
        "contains_accuracy": _mean([row["contains_accuracy"] for row in table.values()]),
        "exact_accuracy": _mean([row["exact_accuracy"] for row in table.values()]),
    }


def rsvqa_lr_scores(records: Iterable[Mapping[str, Any]], *, types: tuple[str, ...] = RSVQA_LR_TYPES) -> dict:
    """RSVQA-LR accuracy per question type (``presence``, ``comparison``, ``rural_urban``) and their average.

    Records carry ``type`` (the release's ``comp`` is read as ``comparison``), ``answer`` and ``prediction``. Two rules:
    RSEvalKit ``contains`` and ``exact``. Types outside ``types`` (by default ``count``, which GeoChat-style
    RSVQA-LR evaluations leave out) are skipped and counted in ``skipped``.
    """
    wanted = set(types)

    def type_of(index: int, record: Mapping[str, Any]) -> str | None:
        raw = str(record_field(record, ("type", "question_type", "category"), index=index, what="type")).strip().lower()
        kind = RSVQA_LR_TYPE_NAMES.get(raw, raw)
        return kind if kind in wanted else None

    table, empty, skipped = _typed_two_rule_scores(records, type_of=type_of)
    if not table:
        raise ValueError(f"rsvqa_lr_scores: no records of types {sorted(wanted)}")
    return {
        "protocol": "rsvqa-lr (RSEvalKit contains rule; exact match; average = mean over types)",
        "avg": _averages(table),
        "per_type": table,
        "empty_predictions": empty,
        "skipped": skipped,
        "total": sum(row["total"] for row in table.values()),
        "notes": {
            "contains_accuracy": "lower-case, spaces removed, prediction contained in answer; empty = wrong",
            "exact_accuracy": "normalised exact match",
            "skipped": f"records whose type is not in {list(types)}",
        },
    }


def synthetic_scores(records: Iterable[Mapping[str, Any]]) -> dict:
    """The synthetic benchmark: exact / contains accuracy per ``type`` and split by the ``small_object`` flag."""
    records = list(records)

    def type_of(index: int, record: Mapping[str, Any]) -> str:
        return str(record_field(record, ("type", "question_type"), index=index, what="type"))

    table, empty, _ = _typed_two_rule_scores(records, type_of=type_of)
    if not table:
        raise ValueError("synthetic_scores: no records")
    by_size, _, _ = _typed_two_rule_scores(
        records, type_of=lambda index, record: "small" if record.get("small_object") else "large"
    )
    return {
        "protocol": "synthetic (exact match; RSEvalKit contains rule; average = mean over types)",
        "avg": _averages(table),
        "per_type": table,
        "by_object_size": by_size,
        "empty_predictions": empty,
        "total": len(records),
        "notes": {"by_object_size": "records split by their small_object flag"},
    }
