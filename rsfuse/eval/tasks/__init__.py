"""Evaluation task readers: pure functions from files to lists of record dicts.

Every record has ``id``, ``image_path`` (a ``pathlib.Path``), ``prompt`` (the exact instruction to give the model),
``type`` and either ``answer`` (closed-form tasks) or ``answers`` (caption references); grounding records carry
``box`` / ``box_scale`` / ``image_size`` instead. The eval recipe adds a ``prediction`` to each record and passes the
list to the matching scorer (``vrsbench_vqa_score``, ``classification_scores``, ``rsvqa_lr_scores``,
``grounding_scores``, ``synthetic_scores``, or ``caption_scores`` on id-keyed dicts).

Each benchmark is also an `EvalTask` object (reader, protocols, scorer) in the registry ``TASKS``; the evaluation
recipe works through ``get_task(name)`` only, and `register_task` adds a benchmark without touching the recipe.
The synthetic benchmark's task and reader live with the benchmark (`rsfuse.synthetic.task`); ``TASKS``,
``TASK_READERS``, ``synthetic`` and ``SYNTHETIC_TASK`` here load it on first access (`load_task_modules`).
"""

from rsfuse.eval.tasks.captioning import CAPTION_PROMPT, CAPTION_TASK, caption
from rsfuse.eval.tasks.classification import CLASSIFICATION_PROMPT, CLS_TASK, cls
from rsfuse.eval.tasks.grounding import GROUNDING_PROMPT, GROUNDING_TASK, grounding
from rsfuse.eval.tasks.registry import EvalTask, get_task, load_task_modules, register_task, task_protocols
from rsfuse.eval.tasks.rsvqa import RSVQA_LR_TASK, RSVQA_PROMPT, rsvqa_lr
from rsfuse.eval.tasks.vrsbench import (
    VRSBENCH_CAP_TASK,
    VRSBENCH_CAPTION_PROMPT,
    VRSBENCH_VQA_PROMPT,
    VRSBENCH_VQA_TASK,
    vrsbench_cap,
    vrsbench_vqa,
)

__all__ = [
    "CAPTION_PROMPT",
    "CLASSIFICATION_PROMPT",
    "EvalTask",
    "TASKS",
    "GROUNDING_PROMPT",
    "RSVQA_PROMPT",
    "TASK_READERS",
    "VRSBENCH_CAPTION_PROMPT",
    "VRSBENCH_VQA_PROMPT",
    "caption",
    "cls",
    "get_task",
    "grounding",
    "load_task_modules",
    "register_task",
    "rsvqa_lr",
    "synthetic",
    "task_protocols",
    "vrsbench_cap",
    "vrsbench_vqa",
]

for _task in (VRSBENCH_VQA_TASK, VRSBENCH_CAP_TASK, CLS_TASK, CAPTION_TASK, RSVQA_LR_TASK, GROUNDING_TASK):
    register_task(_task)
del _task

# The plain reader functions by task name (each task's EvalTask.read adds its default image root and split).
_READERS = {
    "vrsbench_vqa": vrsbench_vqa,
    "vrsbench_cap": vrsbench_cap,
    "cls": cls,
    "caption": caption,
    "rsvqa_lr": rsvqa_lr,
    "grounding": grounding,
}


def __getattr__(name: str):
    """The registry and the synthetic task's names, its module loaded on first access (it imports rsfuse.eval)."""
    if name == "TASKS":
        return load_task_modules()
    if name in ("synthetic", "SYNTHETIC_TASK", "TASK_READERS"):
        from rsfuse.synthetic import task as synthetic_task

        load_task_modules()
        if name == "TASK_READERS":
            return {**_READERS, "synthetic": synthetic_task.synthetic}
        return getattr(synthetic_task, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
