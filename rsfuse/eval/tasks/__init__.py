"""Evaluation task readers: pure functions from files to lists of record dicts.

Every record has ``id``, ``image_path`` (a ``pathlib.Path``), ``prompt`` (the exact instruction to give the model),
``type`` and either ``answer`` (closed-form tasks) or ``answers`` (caption references); grounding records carry
``box`` / ``box_scale`` / ``image_size`` instead. The eval recipe adds a ``prediction`` to each record and passes the
list to the matching scorer (``vrsbench_vqa_score``, ``classification_scores``, ``rsvqa_lr_scores``,
``grounding_scores``, ``synthetic_scores``, or ``caption_scores`` on id-keyed dicts).
"""

from rsfuse.eval.tasks.captioning import CAPTION_PROMPT, caption
from rsfuse.eval.tasks.classification import CLASSIFICATION_PROMPT, cls
from rsfuse.eval.tasks.grounding import GROUNDING_PROMPT, grounding
from rsfuse.eval.tasks.rsvqa import RSVQA_PROMPT, rsvqa_lr
from rsfuse.eval.tasks.synthetic import synthetic
from rsfuse.eval.tasks.vrsbench import VRSBENCH_CAPTION_PROMPT, VRSBENCH_VQA_PROMPT, vrsbench_cap, vrsbench_vqa

__all__ = [
    "CAPTION_PROMPT",
    "CLASSIFICATION_PROMPT",
    "GROUNDING_PROMPT",
    "RSVQA_PROMPT",
    "TASK_READERS",
    "VRSBENCH_CAPTION_PROMPT",
    "VRSBENCH_VQA_PROMPT",
    "caption",
    "cls",
    "grounding",
    "rsvqa_lr",
    "synthetic",
    "vrsbench_cap",
    "vrsbench_vqa",
]

TASK_READERS = {
    "vrsbench_vqa": vrsbench_vqa,
    "vrsbench_cap": vrsbench_cap,
    "cls": cls,
    "caption": caption,
    "rsvqa_lr": rsvqa_lr,
    "grounding": grounding,
    "synthetic": synthetic,
}
