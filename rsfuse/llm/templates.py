"""Conversation templates (LLaVA's ``conv_vicuna_v1`` and ``plain``), prompt tokenization and label masking.

``tokenize_conversation`` reproduces LLaVA's ``preprocess_multimodal`` + ``preprocess_v1`` / ``preprocess_plain``:

- an ``<image>`` in a user turn is moved to the front of that turn followed by ``"\\n"`` (``preprocess_multimodal``);
- the prompt is tokenized like ``tokenizer_image_token``: split on ``<image>``, each chunk encoded on its own (BOS only
  on the first), and ``IMAGE_TOKEN_INDEX`` (-200) put where ``<image>`` stood;
- labels keep only the assistant answers (for ``vicuna_v1``: the space after ``ASSISTANT:``, the answer and its
  closing ``</s>``; for ``plain``: the caption and its ``"\\n"``); everything else is ``IGNORE_INDEX`` (-100).

LLaVA finds the answer tokens by counting tokens of each round tokenized on its own, which silently zeroes every label
of a sample ("tokenization mismatch") when the tokenizer merges text across a turn boundary. Here every token is
aligned to the byte range of the prompt it covers; a token that straddles a boundary between masked and trained text
raises :class:`TokenizationMismatchError` showing the sample.

Task tags (``{IT}``, ``{VG}``, ``{VQA}``, ``{CLS}``) and boxes are plain text and stay in the prompt, as the authors
train them. This module imports no model code and no torch.
"""

from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

from rsfuse.llm.model import IGNORE_INDEX
from rsfuse.llm.tokenizer import IMAGE_TOKEN_INDEX, Tokenizer

__all__ = [
    "IMAGE_TOKEN_INDEX",
    "IGNORE_INDEX",
    "IMAGE_PLACEHOLDER",
    "ConversationTemplate",
    "ConversationError",
    "TokenizationMismatchError",
    "TokenizedConversation",
    "TEMPLATES",
    "get_template",
    "validate_conversation",
    "build_prompt",
    "tokenize_prompt",
    "tokenize_conversation",
]

IMAGE_PLACEHOLDER = "<image>"

USER_SPEAKERS = frozenset({"human", "user"})
ASSISTANT_SPEAKERS = frozenset({"gpt", "assistant"})


class ConversationError(ValueError):
    """A conversation is malformed (speakers, turn order, image placement, empty text); the message says which turn."""


class TokenizationMismatchError(ValueError):
    """A token crosses a boundary between masked prompt text and a trained answer; the message shows the sample."""


@dataclass(frozen=True, kw_only=True)
class ConversationTemplate:
    """A prompt format.

    ``style="two"``: ``system + sep``, then per round ``USER: q + sep`` and ``ASSISTANT: a + sep2``
    (LLaVA's ``SeparatorStyle.TWO``). ``style="plain"``: ``<image>`` then the first answer + ``sep``, the question
    dropped (LLaVA's stage-1 ``preprocess_plain``).
    """

    name: str
    style: Literal["two", "plain"]
    system: str = ""
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = " "
    sep2: str = "</s>"


VICUNA_V1 = ConversationTemplate(
    name="vicuna_v1",
    style="two",
    system=(
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    ),
    roles=("USER", "ASSISTANT"),
    sep=" ",
    sep2="</s>",
)

PLAIN = ConversationTemplate(name="plain", style="plain", system="", roles=("", ""), sep="\n", sep2="")

TEMPLATES: dict[str, ConversationTemplate] = {VICUNA_V1.name: VICUNA_V1, PLAIN.name: PLAIN}


def get_template(template: "str | ConversationTemplate") -> ConversationTemplate:
    """The template named ``template`` (``"vicuna_v1"`` or ``"plain"``), or ``template`` itself."""
    if isinstance(template, ConversationTemplate):
        return template
    if template not in TEMPLATES:
        raise KeyError(f"unknown conversation template {template!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[template]


@dataclass(frozen=True)
class TokenizedConversation:
    """Token ids (``-200`` where the image goes) and labels (``-100`` where nothing is trained), same length."""

    input_ids: list[int]
    labels: list[int]
    has_image: bool
    truncated: bool
    prompt: str = field(default="", repr=False)

    @property
    def num_trained(self) -> int:
        """How many positions carry a label."""
        return sum(label != IGNORE_INDEX for label in self.labels)


# ---------------------------------------------------------------------------------------------- prompt text


def _move_image_to_front(text: str) -> str:
    """LLaVA's ``preprocess_multimodal``: ``<image>`` removed, then put first, followed by a newline."""
    return IMAGE_PLACEHOLDER + "\n" + text.replace(IMAGE_PLACEHOLDER, "").strip()


def _normalise_turns(conversations: Sequence[Mapping]) -> list[tuple[str, str]]:
    """Check speakers, alternation and image placement; return ``[(question, answer), ...]``."""
    if not isinstance(conversations, Sequence) or isinstance(conversations, (str, bytes)) or not conversations:
        raise ConversationError("conversations must be a non-empty list of {'from', 'value'} turns")
    turns: list[str] = []
    image_turns = 0
    for position, turn in enumerate(conversations):
        if not isinstance(turn, Mapping) or "from" not in turn or "value" not in turn:
            raise ConversationError(f"turn {position}: expected an object with 'from' and 'value', got {turn!r}")
        speaker, value = turn["from"], turn["value"]
        expect_user = position % 2 == 0
        allowed = USER_SPEAKERS if expect_user else ASSISTANT_SPEAKERS
        if speaker not in allowed:
            raise ConversationError(
                f"turn {position}: speaker {speaker!r}, expected one of {sorted(allowed)} (turns must alternate, "
                "user first)"
            )
        if not isinstance(value, str) or not value.strip():
            raise ConversationError(f"turn {position} ({speaker}): the text is empty or not a string: {value!r}")
        count = value.count(IMAGE_PLACEHOLDER)
        if count and not expect_user:
            raise ConversationError(f"turn {position} ({speaker}): {IMAGE_PLACEHOLDER} in an assistant answer")
        if count > 1:
            raise ConversationError(f"turn {position}: {count} {IMAGE_PLACEHOLDER} tokens; one image per sample")
        image_turns += count
        if count:
            value = _move_image_to_front(value)
        turns.append(value)
    if image_turns > 1:
        raise ConversationError(f"{image_turns} turns hold {IMAGE_PLACEHOLDER}; one image per sample")
    if len(turns) % 2:
        raise ConversationError(f"the last turn (turn {len(turns) - 1}) is a user turn with no answer to train on")
    return [(turns[i], turns[i + 1]) for i in range(0, len(turns), 2)]


def validate_conversation(conversations: Sequence[Mapping]) -> None:
    """Raise :class:`ConversationError` if ``conversations`` is malformed (speakers, order, empty text, images)."""
    _normalise_turns(conversations)


def _segments(rounds: list[tuple[str, str]], template: ConversationTemplate) -> list[tuple[str, bool]]:
    """The prompt as ``(text, trained)`` pieces, in order."""
    if template.style == "plain":
        question, answer = rounds[0]
        if len(rounds) != 1:
            raise ConversationError(f"template 'plain' takes one (image, caption) round, got {len(rounds)}")
        if IMAGE_PLACEHOLDER not in question:
            raise ConversationError(f"template 'plain' needs {IMAGE_PLACEHOLDER} in the user turn")
        return [(IMAGE_PLACEHOLDER, False), (answer + template.sep, True)]
    if template.style != "two":
        raise ConversationError(f"template {template.name!r}: unknown style {template.style!r}")
    user, assistant = template.roles
    pieces: list[tuple[str, bool]] = [(template.system + template.sep, False)]
    for question, answer in rounds:
        pieces.append((f"{user}: {question}{template.sep}{assistant}:", False))
        pieces.append((f" {answer}{template.sep2}", True))
    return pieces


def build_prompt(template: "str | ConversationTemplate", question: str, *, with_image: bool = True) -> str:
    """Generation prompt for one question: ``vicuna_v1`` ends with ``"ASSISTANT:"``; ``plain`` is ``"<image>"``.

    With ``with_image`` the question gets ``<image>\\n`` in front (an ``<image>`` already in it is moved there).
    """
    template = get_template(template)
    if IMAGE_PLACEHOLDER in question and not with_image:
        raise ConversationError(f"question contains {IMAGE_PLACEHOLDER} but with_image=False: {question!r}")
    if template.style == "plain":
        if not with_image:
            raise ConversationError("template 'plain' always starts with the image")
        return IMAGE_PLACEHOLDER
    text = _move_image_to_front(question) if with_image else question
    user, assistant = template.roles
    return f"{template.system}{template.sep}{user}: {text}{template.sep}{assistant}:"


# ---------------------------------------------------------------------------------------------- tokenization


def _encode_with_offsets(prompt: str, tokenizer: Tokenizer) -> list[tuple[int, int, int]]:
    """``(id, start, end)`` per token, byte offsets in ``prompt``; BOS first (empty span), -200 for ``<image>``."""
    tokens = [(tokenizer.bos_id, 0, 0)]
    offset = 0
    placeholder_size = len(IMAGE_PLACEHOLDER.encode("utf-8"))
    for index, chunk in enumerate(prompt.split(IMAGE_PLACEHOLDER)):
        if index:
            tokens.append((IMAGE_TOKEN_INDEX, offset, offset + placeholder_size))
            offset += placeholder_size
        tokens.extend((span.token_id, offset + span.start, offset + span.end) for span in tokenizer.encode_spans(chunk))
        offset += len(chunk.encode("utf-8"))
    return tokens


def tokenize_prompt(prompt: str, tokenizer: Tokenizer) -> list[int]:
    """LLaVA's ``tokenizer_image_token``: BOS, then the prompt's ids with ``-200`` where ``<image>`` stood."""
    return [token_id for token_id, _, _ in _encode_with_offsets(prompt, tokenizer)]


def tokenize_conversation(
    conversations: Sequence[Mapping],
    tokenizer: Tokenizer,
    template: "str | ConversationTemplate",
    *,
    max_length: int | None = None,
) -> TokenizedConversation:
    """Tokenize a LLaVA/VHM conversation (``[{"from": "human"|"gpt", "value": ...}, ...]``) for training.

    Returns ids and labels of equal length (cut to ``max_length`` if given, ``truncated`` says so). Raises
    :class:`ConversationError` for a malformed conversation and :class:`TokenizationMismatchError` when the
    tokenizer's tokens do not respect the template's turn boundaries.
    """
    template = get_template(template)
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    segments = _segments(_normalise_turns(conversations), template)
    prompt = "".join(text for text, _ in segments)
    trained_bytes: list[bool] = []
    for text, trained in segments:
        trained_bytes.extend([trained] * len(text.encode("utf-8")))
    input_ids: list[int] = []
    labels: list[int] = []
    for token_id, start, end in _encode_with_offsets(prompt, tokenizer):
        covered = trained_bytes[start:end] if end > start else trained_bytes[start : start + 1]
        trained = bool(covered) and all(covered)
        if trained != (bool(covered) and any(covered)):
            raise TokenizationMismatchError(_mismatch_message(prompt, segments, tokenizer, token_id, start, end))
        input_ids.append(token_id)
        labels.append(token_id if trained else IGNORE_INDEX)
    has_image = IMAGE_TOKEN_INDEX in input_ids
    truncated = max_length is not None and len(input_ids) > max_length
    if truncated:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return TokenizedConversation(input_ids, labels, has_image, truncated, prompt)


def _mismatch_message(
    prompt: str,
    segments: list[tuple[str, bool]],
    tokenizer: Tokenizer,
    token_id: int,
    start: int,
    end: int,
) -> str:
    raw = prompt.encode("utf-8")
    piece = tokenizer.id_to_piece(token_id)
    layout = " | ".join(f"{'TRAIN' if trained else 'mask'}:{text!r}" for text, trained in segments)
    return (
        f"tokenization mismatch: token {piece!r} (id {token_id}) covers bytes [{start}, {end}) = "
        f"{raw[start:end].decode('utf-8', 'replace')!r}, which cross a boundary between masked prompt text and a "
        f"trained answer; the labels would be wrong. Sample segments: {layout}"
    )
