"""Question-answer pairs about a synthetic scene, with short canonical answers for exact / contains matching.

Types: ``count`` ("3"), ``existence`` (asked as a pair about the same image: "yes" about a present kind and "no"
about an absent one; only the "no" on an object-free scene), ``colour`` and ``position`` (asked only about a kind with exactly one instance; "red", "top left"),
``scene`` (the class name) and ``caption`` (a templated sentence). The first four are small-object
questions: answering them needs the detail that a coarse global view loses.
"""

from dataclasses import dataclass

import numpy as np

from rsfuse.synthetic.scene import OBJECT_KINDS, Scene, plural

__all__ = [
    "QUESTION_TYPES",
    "SMALL_OBJECT_TYPES",
    "QUESTION_WEIGHTS",
    "SCENE_PHRASES",
    "QuestionAnswer",
    "ask_questions",
    "caption",
]

QUESTION_TYPES: tuple[str, ...] = ("count", "existence", "colour", "position", "scene", "caption")
SMALL_OBJECT_TYPES: frozenset[str] = frozenset({"count", "existence", "colour", "position"})
QUESTION_WEIGHTS: dict[str, float] = {
    "count": 2.0,
    "existence": 2.0,
    "colour": 3.0,
    "position": 3.0,
    "scene": 1.0,
    "caption": 1.0,
}
SCENE_PHRASES: dict[str, str] = {
    "farmland": "farmland",
    "residential": "a residential area",
    "harbor": "a harbor",
    "airport": "an airport",
    "industrial": "an industrial area",
    "forest": "a forest",
    "river": "a river",
}


@dataclass(frozen=True)
class QuestionAnswer:
    """One question about one image; ``kind`` names the object kind asked about (None for scene/caption)."""

    question_type: str
    question: str
    answer: str
    kind: str | None = None

    @property
    def small_object(self) -> bool:
        return self.question_type in SMALL_OBJECT_TYPES


def _join(words: list[str], conjunction: str) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {conjunction} {words[-1]}"


def caption(scene: Scene) -> str:
    """``"An aerial view of a harbor with 2 ships and 1 vehicle."`` (kinds in OBJECT_KINDS order)."""
    present = [f"{scene.count(kind)} {plural(kind, scene.count(kind))}" for kind in OBJECT_KINDS if scene.count(kind)]
    if present:
        contents = _join(present, "and")
    else:
        contents = "no " + _join([plural(kind) for kind in scene.candidate_kinds], "or")
    return f"An aerial view of {SCENE_PHRASES[scene.scene_class]} with {contents}."


def _single_kinds(scene: Scene) -> list[str]:
    return [kind for kind in OBJECT_KINDS if scene.count(kind) == 1]


def _ask(scene: Scene, question_type: str, rng: np.random.Generator) -> QuestionAnswer:
    def pick(options):
        return options[int(rng.integers(len(options)))]

    if question_type == "count":
        kind = pick(scene.candidate_kinds)
        return QuestionAnswer("count", f"How many {plural(kind)} are there?", str(scene.count(kind)), kind)
    if question_type in ("existence yes", "existence no"):
        want_yes = question_type == "existence yes"
        present = [kind for kind in OBJECT_KINDS if scene.count(kind)]
        absent = [kind for kind in scene.candidate_kinds if not scene.count(kind)]
        absent = absent or [kind for kind in OBJECT_KINDS if not scene.count(kind)]
        kind = pick(present if want_yes else absent)
        return QuestionAnswer("existence", f"Is there a {kind} in the image?", "yes" if want_yes else "no", kind)
    if question_type == "colour":
        kind = pick(_single_kinds(scene))
        return QuestionAnswer("colour", f"What colour is the {kind}?", scene.objects_of(kind)[0].colour, kind)
    if question_type == "position":
        kind = pick(_single_kinds(scene))
        answer = scene.objects_of(kind)[0].quadrant(scene.size)
        return QuestionAnswer("position", f"In which quadrant of the image is the {kind}?", answer, kind)
    if question_type == "scene":
        return QuestionAnswer("scene", "What type of scene is this?", scene.scene_class)
    if question_type == "caption":
        return QuestionAnswer("caption", "Describe the image.", caption(scene))
    raise ValueError(f"question_type: {question_type!r} is not one of {QUESTION_TYPES}")


def ask_questions(scene: Scene, rng: np.random.Generator, *, count: int) -> list[QuestionAnswer]:
    """``count`` questions of distinct types about ``scene``, types drawn by QUESTION_WEIGHTS among those that apply
    (``colour``/``position`` need a kind with exactly one instance); fewer when fewer types apply. A drawn
    ``existence`` type yields two questions (a "yes" and a "no" pair; one "no" on an object-free scene): with a
    single existence question per image, a model can memorise image -> answer and never read the kind asked about."""
    if count < 1:
        raise ValueError(f"questions_per_image: must be >= 1, got {count}")
    feasible = [t for t in QUESTION_TYPES if t not in ("colour", "position") or _single_kinds(scene)]
    weights = np.array([QUESTION_WEIGHTS[t] for t in feasible])
    chosen = rng.choice(len(feasible), size=min(count, len(feasible)), replace=False, p=weights / weights.sum())
    # Existence comes as a yes/no pair about the same image, in a random order; "yes" needs an object.
    answers = ("existence yes", "existence no") if scene.objects else ("existence no",)
    if rng.random() < 0.5:
        answers = answers[::-1]
    questions = []
    for index in sorted(chosen):
        question_type = feasible[int(index)]
        for asked in answers if question_type == "existence" else (question_type,):
            questions.append(_ask(scene, asked, rng))
    return questions
