"""The synthetic remote-sensing benchmark, in one place: scenes (`scene`), their layouts (`layouts`) and small
objects (`placement`), rendering (`render`), questions (`questions`), the benchmark writer and ``rsfuse synth`` (`benchmark`), and the tower
pretraining on its per-patch labels (`tower_pretrain`), and the evaluation task ``synthetic`` (`task`: reader and
`SYNTHETIC_TASK`, registered in the evaluation registry when it is first read; scorer `rsfuse.eval.synthetic_scores`).

Imports: numpy / PIL for the benchmark; `rsfuse.encoders`, `rsfuse.checkpoints` and `rsfuse.data` for the tower
pretraining (imported when first used); `rsfuse.eval` for the task (`rsfuse.synthetic.task`, not imported here).
"""

from rsfuse.synthetic.benchmark import IDENTITY_DEFAULTS, generate, load_scenes
from rsfuse.synthetic.placement import make_scene
from rsfuse.synthetic.questions import QUESTION_TYPES, SMALL_OBJECT_TYPES, ask_questions
from rsfuse.synthetic.render import render_scene
from rsfuse.synthetic.scene import COLOUR_NAMES, OBJECT_KINDS, QUADRANTS, SCENE_CLASSES, Scene

SMALL_OBJECT_QUESTIONS: tuple[str, ...] = tuple(kind for kind in QUESTION_TYPES if kind in SMALL_OBJECT_TYPES)
"""The small-object question types in report order (count, existence, colour, position)."""
OTHER_QUESTIONS: tuple[str, ...] = tuple(kind for kind in QUESTION_TYPES if kind not in SMALL_OBJECT_TYPES)
"""The other question types in report order (scene, caption)."""

__all__ = [
    "COLOUR_NAMES",
    "IDENTITY_DEFAULTS",
    "OBJECT_KINDS",
    "OTHER_QUESTIONS",
    "QUADRANTS",
    "QUESTION_TYPES",
    "SCENE_CLASSES",
    "SMALL_OBJECT_QUESTIONS",
    "SMALL_OBJECT_TYPES",
    "Scene",
    "TowerPretrainSettings",
    "ask_questions",
    "generate",
    "load_scenes",
    "make_scene",
    "patch_labels",
    "pretrain_synthetic_tower",
    "render_scene",
]


def __getattr__(name: str):
    if name in ("TowerPretrainSettings", "patch_labels", "pretrain_synthetic_tower"):
        from rsfuse.synthetic import tower_pretrain

        return getattr(tower_pretrain, name)
    raise AttributeError(f"module 'rsfuse.synthetic' has no attribute {name!r}")
