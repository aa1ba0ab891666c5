"""Evaluation metrics and task readers (DESIGN section 5). Every result names the protocol that produced it.

Metrics: ``caption_scores`` (``coco`` / ``compat``), ``contains_match`` / ``exact_match`` / ``classification_scores``,
``vrsbench_vqa_score`` (``official`` with a pluggable judge / ``lenient``), ``rsvqa_lr_scores``, ``synthetic_scores``,
``grounding_scores`` with ``parse_box`` and ``box_iou``; ``metrics_to_markdown`` renders any result.
Readers (``rsfuse.eval.tasks``): ``vrsbench_vqa``, ``vrsbench_cap``, ``cls``, ``caption``, ``rsvqa_lr``,
``grounding``, ``synthetic``; all are pure file -> records functions. Each benchmark is an ``EvalTask`` (reader,
protocols, scorer) in the registry ``TASKS`` (``get_task``, ``register_task``), which the evaluation recipe uses.
"""

from rsfuse.eval.captions import CAPTION_METRICS, caption_scores, java_available, wordnet_available
from rsfuse.eval.grounding import box_iou, grounding_scores, parse_box, to_pixels
from rsfuse.eval.matching import classification_scores, contains_match, exact_match, lenient_match
from rsfuse.eval.report import metrics_to_markdown
from rsfuse.eval import tasks as _tasks
from rsfuse.eval.tasks import (
    EvalTask,
    get_task,
    register_task,
    caption,
    cls,
    grounding,
    rsvqa_lr,
    vrsbench_cap,
    vrsbench_vqa,
)
from rsfuse.eval.vqa import (
    VRSBENCH_REFERENCE_TYPE_ALIASES,
    rsvqa_lr_scores,
    synthetic_scores,
    vrsbench_official_decision,
    vrsbench_vqa_score,
)

__all__ = [
    "CAPTION_METRICS",
    "EvalTask",
    "TASKS",
    "TASK_READERS",
    "VRSBENCH_REFERENCE_TYPE_ALIASES",
    "box_iou",
    "caption",
    "caption_scores",
    "classification_scores",
    "cls",
    "contains_match",
    "exact_match",
    "get_task",
    "grounding",
    "grounding_scores",
    "java_available",
    "lenient_match",
    "metrics_to_markdown",
    "parse_box",
    "register_task",
    "rsvqa_lr",
    "rsvqa_lr_scores",
    "synthetic",
    "synthetic_scores",
    "to_pixels",
    "vrsbench_cap",
    "vrsbench_official_decision",
    "vrsbench_vqa",
    "vrsbench_vqa_score",
    "wordnet_available",
]


def __getattr__(name: str):
    """``TASKS``, ``TASK_READERS`` and the synthetic reader ``synthetic`` (now `rsfuse.synthetic.task`), loaded on
    first access: the synthetic benchmark's package builds on rsfuse.eval."""
    if name in ("TASKS", "TASK_READERS", "synthetic"):
        return getattr(_tasks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
