"""From a checked request to model inputs, and from generated tokens back to text.

`PromptEncoder.encode` is the one place that turns a conversation and its image into tensors (template, tokenizer,
image preprocessing); `collate` left-pads several encoded prompts into one ``GenerationSession.add`` batch;
`TextStream` turns a row's growing token list into text deltas, cut at the first stop string and holding back
what could still become one (or a half-decoded UTF-8 character).
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from rsfuse.serve.errors import bad_request
from rsfuse.serve.protocol import Turn

__all__ = ["EncodedPrompt", "PromptEncoder", "TextStream", "collate", "recorded_template"]

DEFAULT_TEMPLATE = "vicuna_v1"


def recorded_template(model_dir: str | Path | None) -> str:
    """The conversation template recorded in the model folder's ``config.json`` (``template`` or
    ``conversation_template``), else ``vicuna_v1``."""
    if model_dir is not None:
        config = Path(model_dir) / "config.json"
        try:
            data = json.loads(config.read_text())
        except (OSError, ValueError):
            data = {}
        for key in ("template", "conversation_template"):
            if isinstance(data.get(key), str):
                return data[key]
    return DEFAULT_TEMPLATE


@dataclass
class EncodedPrompt:
    """One prompt: ``input_ids``/``attention_mask`` ``[1, L]``, ``pixel_values`` ``[1, 3, S, S]`` or None, and
    ``length`` = the positions it takes in the decoder (text + visual tokens)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor | None
    length: int
    image: Image.Image | None = None  # as given (the page's pictures draw it)


class PromptEncoder:
    """Template + tokenizer + image preprocessing of one model (to be replaced by ``MFRSVLMProcessor``)."""

    def __init__(self, model, tokenizer, template: str = DEFAULT_TEMPLATE) -> None:
        from rsfuse.data.images import ImageProcessor  # noqa: PLC0415
        from rsfuse.llm.templates import get_template  # noqa: PLC0415

        self.model = model
        self.tokenizer = tokenizer
        self.template = get_template(template)
        self.images = ImageProcessor(model.config.input_size)
        self.eos_ids = frozenset({int(tokenizer.eos_id)})

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([token for token in ids if token not in self.eos_ids])

    def prompt_text(self, turns: Sequence[Turn]) -> str:
        """The generation prompt of a conversation (``<image>`` where the image goes), ending with the assistant's
        role tag; a system message replaces the template's system text."""
        from rsfuse.llm.templates import IMAGE_PLACEHOLDER  # noqa: PLC0415

        template = self.template
        if template.style == "plain":
            if not any(turn.image is not None for turn in turns):
                raise bad_request(f"template {template.name!r} needs an image", "messages")
            return IMAGE_PLACEHOLDER
        user, assistant = template.roles
        system = next((turn.text for turn in turns if turn.role == "system"), template.system)
        text = system + template.sep
        for turn in turns:
            if turn.role == "user":
                question = turn.text.strip()
                if turn.image is not None:
                    question = IMAGE_PLACEHOLDER + "\n" + question
                text += f"{user}: {question}{template.sep}{assistant}:"
            elif turn.role == "assistant":
                text += f" {turn.text.strip()}{template.sep2}"
        return text

    def encode(self, turns: Sequence[Turn], image: Image.Image | None) -> EncodedPrompt:
        from rsfuse.llm.templates import tokenize_prompt  # noqa: PLC0415

        device = self.model.device
        ids = torch.tensor([tokenize_prompt(self.prompt_text(turns), self.tokenizer)], device=device)
        mask = torch.ones_like(ids)
        pixels = None
        if image is not None:
            pixels = self.images(image)[None].to(device=device, dtype=self.model.dtype)
        layout = self.model.layout(ids, mask, image_mask=None if pixels is None else torch.ones(1, dtype=torch.bool,
                                   device=device), padding_side="left")
        return EncodedPrompt(ids, mask, pixels, int(layout.input_ids.shape[1]), image)


def collate(prompts: Sequence[EncodedPrompt], pad_token_id: int) -> dict:
    """Left-pad prompts into one batch for ``GenerationSession.add`` (``image_mask`` when only some have images)."""
    width = max(prompt.input_ids.shape[1] for prompt in prompts)
    first = prompts[0].input_ids
    ids = torch.full((len(prompts), width), pad_token_id, dtype=first.dtype, device=first.device)
    mask = torch.zeros((len(prompts), width), dtype=prompts[0].attention_mask.dtype, device=first.device)
    for row, prompt in enumerate(prompts):
        length = prompt.input_ids.shape[1]
        ids[row, width - length:] = prompt.input_ids[0]
        mask[row, width - length:] = prompt.attention_mask[0]
    with_image = [prompt.pixel_values is not None for prompt in prompts]
    pixels, image_mask = None, None
    if any(with_image):
        sample = next(prompt.pixel_values for prompt in prompts if prompt.pixel_values is not None)
        pixels = torch.cat([prompt.pixel_values if prompt.pixel_values is not None else torch.zeros_like(sample)
                            for prompt in prompts])
        if not all(with_image):
            image_mask = torch.tensor(with_image, dtype=torch.bool, device=first.device)
    return {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask, "image_mask": image_mask}


class TextStream:
    """Text deltas of one answer. ``push(new_tokens, final)`` returns the text safe to send now; ``stopped`` turns
    true once a stop string appeared (the text ends before it)."""

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()) -> None:
        self.decode = decode
        self.stop = tuple(stop)
        self.tokens: list[int] = []
        self.text = ""
        self.sent = 0
        self.stopped = False

    def push(self, new_tokens: Sequence[int], final: bool = False) -> str:
        if self.stopped:
            return ""
        self.tokens.extend(new_tokens)
        text = self.decode(self.tokens)
        cuts = [index for index in (text.find(stop) for stop in self.stop) if index >= 0]
        if cuts:
            text, final, self.stopped = text[: min(cuts)], True, True
        self.text = text
        end = len(text)
        if not final:
            while end > self.sent and text[end - 1] == "\ufffd":  # a multi-byte character still arriving
                end -= 1
            for stop in self.stop:  # a suffix that may grow into a stop string
                for size in range(min(len(stop) - 1, end - self.sent), 0, -1):
                    if text[end - size:end] == stop[:size]:
                        end -= size
                        break
        end = max(end, self.sent)
        delta = text[self.sent:end]
        self.sent = end
        return delta
