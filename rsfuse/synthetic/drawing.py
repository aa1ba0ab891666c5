"""One image of the synthetic benchmark: its scene, pixels and questions, a function of the dataset seed and the
image index (`rsfuse.synthetic.benchmark` writes datasets of them; `rsfuse.synthetic.mosaic_scene` lays them out as
one large scene)."""

import numpy as np

from rsfuse.synthetic.placement import make_scene
from rsfuse.synthetic.questions import ask_questions
from rsfuse.synthetic.render import render_scene
from rsfuse.synthetic.scene import Scene

__all__ = ["IMAGE_STREAM", "draw_image"]

IMAGE_STREAM = 1  # the random stream of images (the benchmark's split assignment draws from stream 2)


def draw_image(
    seed: int, index: int, *, size: int, questions_per_image: int, object_scale: float = 1.0
) -> tuple[Scene, np.ndarray, list]:
    """Scene, pixels ``uint8 [size, size, 3]`` and question-answer pairs of image ``index`` of dataset ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, IMAGE_STREAM, index]))
    scene = make_scene(rng, size=size, object_scale=object_scale)
    questions = ask_questions(scene, rng, count=questions_per_image)
    return scene, render_scene(scene), questions
