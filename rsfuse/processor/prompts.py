"""Prompt text of one sample: a question (one user turn, LLaVA's ``<image>\\n`` in front when it has an image) or a
conversation of ``{"from": "human"|"gpt", "value"}`` / ``{"role": "user"|"assistant"|"system", "content"}`` turns, in
a conversation template, and its raw token ids (`prompt_token_ids`, before the sequence layout)."""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from rsfuse.llm.templates import IMAGE_PLACEHOLDER, ConversationTemplate, get_template, tokenize_prompt
from rsfuse.llm.tokenizer import Tokenizer
from rsfuse.options import DEFAULT_TEMPLATE

__all__ = ["DEFAULT_TEMPLATE", "prompt_token_ids", "prompt_text", "template_and_rounds"]

_USER_ROLES = {"human": "user", "user": "user"}
_ASSISTANT_ROLES = {"gpt": "assistant", "assistant": "assistant"}


def _turn_text(turn: Any, where: str) -> tuple[str, str, bool]:
    """``(role, text, has_image_part)`` of one turn; role is "user", "assistant" or "system"."""
    if not isinstance(turn, Mapping):
        raise ValueError(f"{where}: a turn must be a dict with 'from'/'value' or 'role'/'content', got {turn!r}")
    if "from" in turn:
        speaker, content = turn["from"], turn.get("value")
    elif "role" in turn:
        speaker, content = turn["role"], turn.get("content")
    else:
        raise ValueError(f"{where}: a turn needs 'from' (LLaVA) or 'role' (OpenAI), got keys {sorted(turn)}")
    role = _USER_ROLES.get(speaker) or _ASSISTANT_ROLES.get(speaker) or ("system" if speaker == "system" else None)
    if role is None:
        raise ValueError(
            f"{where}: unknown role {speaker!r} (known: human/user, gpt/assistant, system)"
        )
    has_image_part = False
    if isinstance(content, list):  # OpenAI / HF chat parts: [{"type": "image"}, {"type": "text", "text": ...}]
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind in ("image", "image_url"):
                has_image_part = True
            else:
                raise ValueError(f"{where}: content part {part!r} is neither a 'text' nor an 'image' part")
        content = "\n".join(texts)
    if not isinstance(content, str):
        raise ValueError(f"{where}: the text of a {role} turn must be a string, got {type(content).__name__}")
    return role, content, has_image_part


def _rounds(
    conversation: Sequence[Any], where: str, *, has_image: bool
) -> tuple[str | None, list[tuple[str, str | None]]]:
    """``(system or None, [(question, answer or None), ...])``; the image marker put in its user turn."""
    if isinstance(conversation, (str, bytes)) or not isinstance(conversation, Sequence) or not conversation:
        raise ValueError(f"{where}: a conversation must be a non-empty list of turns")
    system = None
    turns: list[tuple[str, str]] = []
    image_turn: int | None = None
    for index, turn in enumerate(conversation):
        role, text, image_part = _turn_text(turn, f"{where}[{index}]")
        if role == "system":
            if index != 0:
                raise ValueError(f"{where}[{index}]: a system turn may only come first")
            system = text
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(
                f"{where}[{index}]: a {role} turn where a {expected} turn is expected (turns alternate, user first)"
            )
        if not text.strip() and not image_part:
            raise ValueError(f"{where}[{index}]: the {role} turn is empty")
        if IMAGE_PLACEHOLDER in text or image_part:
            if role != "user":
                raise ValueError(f"{where}[{index}]: an image in an assistant turn")
            if image_turn is not None or text.count(IMAGE_PLACEHOLDER) > 1:
                raise ValueError(f"{where}: more than one image marker; one image per sample")
            image_turn = len(turns)
            text = text.replace(IMAGE_PLACEHOLDER, "").strip()
        turns.append((role, text))
    if not turns:
        raise ValueError(f"{where}: the conversation has no user turn")
    if image_turn is not None and not has_image:
        raise ValueError(f"{where}: the conversation marks an image ({IMAGE_PLACEHOLDER}) but its image is None")
    if has_image:
        first = 0 if image_turn is None else image_turn
        role, text = turns[first]
        turns[first] = (role, IMAGE_PLACEHOLDER + "\n" + text.strip())
    rounds = [(turns[i][1], turns[i + 1][1] if i + 1 < len(turns) else None) for i in range(0, len(turns), 2)]
    return system, rounds


def prompt_text(template: ConversationTemplate, rounds: list[tuple[str, str | None]], *, open_turn: bool) -> str:
    """The template's prompt: every round closed with ``sep2`` after its answer; a last round without an answer ends
    with the assistant's turn open (``open_turn``) or right after the question."""
    if template.style == "plain":
        question, answer = rounds[-1]
        if len(rounds) != 1 or IMAGE_PLACEHOLDER not in question:
            raise ValueError("template 'plain' takes one question with an image")
        return IMAGE_PLACEHOLDER if answer is None else IMAGE_PLACEHOLDER + answer + template.sep
    user, assistant = template.roles
    text = template.system + template.sep
    for question, answer in rounds:
        text += f"{user}: {question}{template.sep}"
        if answer is not None:
            text += f"{assistant}: {answer}{template.sep2}"
        elif open_turn:
            text += f"{assistant}:"
    return text


def prompt_token_ids(
    text: str | Sequence[Mapping[str, Any]],
    tokenizer: Tokenizer,
    template: str | ConversationTemplate = DEFAULT_TEMPLATE,
    *,
    has_image: bool = True,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Raw prompt ids of one sample (BOS first, ``-200`` where the image goes), before layout: a question is one
    user turn (LLaVA's ``<image>\\n`` in front when ``has_image``); a conversation is every turn in the template,
    the assistant's turn left open after a last user turn (``add_generation_prompt``)."""
    conversation: Sequence[Any] = [{"from": "human", "value": text}] if isinstance(text, str) else text
    template, rounds = template_and_rounds(get_template(template), conversation, "text", has_image=has_image)
    return tokenize_prompt(prompt_text(template, rounds, open_turn=add_generation_prompt), tokenizer)


def template_and_rounds(
    template: ConversationTemplate, conversation: Sequence[Any], where: str, *, has_image: bool
) -> tuple[ConversationTemplate, list[tuple[str, str | None]]]:
    """The rounds of ``conversation`` and the template with its system text replaced by a system turn, if any."""
    system, rounds = _rounds(conversation, where, has_image=has_image)
    return (template if system is None else dataclasses.replace(template, system=system)), rounds
