"""From a checked request to model inputs, and from generated tokens back to text.

`PromptEncoder.encode` is the one place that turns a conversation and its image into tensors (``MFRSVLMProcessor``:
template, tokenizer, image preprocessing, sequence layout); `collate` left-pads several encoded prompts into one
``GenerationSession.add`` batch;
`TextStream` turns a row's growing token list into text deltas, cut at the first stop string and holding back
what could still become one (or a half-decoded UTF-8 character).
"""

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from PIL import Image
from torch.nn.utils.rnn import pad_sequence

from rsfuse.serve.protocol import Turn

__all__ = ["EncodedPrompt", "PromptEncoder", "TextStream", "collate"]


@dataclass
class EncodedPrompt:
    """One prompt as ``MFRSVLMProcessor`` lays it out: ``input_ids``/``attention_mask`` ``[1, L]`` (visual slots
    included), ``pixel_values`` ``[1, 3, S, S]`` or None; ``length`` = the positions it takes in the decoder."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor | None
    length: int
    image: Image.Image | None = None  # as given (the page's pictures draw it)


class PromptEncoder:
    """The model's ``MFRSVLMProcessor`` (template, tokenizer, image preprocessing, sequence layout), one request at
    a time, with the results on the model's device."""

    def __init__(self, model, processor) -> None:
        self.model = model
        self.processor = processor
        self.images = processor.image_processor
        self.eos_ids = frozenset(int(token) for token in processor.eos_token_ids)

    @classmethod
    def for_model(cls, model, tokenizer=None, *, template: str | None = None) -> "PromptEncoder":
        """From a loaded model (``tokenizer`` None: the one it was loaded with; ``template`` None: the recorded one,
        else ``vicuna_v1``)."""
        from rsfuse.processor import MFRSVLMProcessor  # noqa: PLC0415

        return cls(model, MFRSVLMProcessor.from_model(model, tokenizer, template=template))

    def decode(self, ids: Sequence[int]) -> str:
        return self.processor.decode(list(ids))

    @staticmethod
    def conversation(turns: Sequence[Turn]) -> list[dict]:
        """OpenAI-style turns for the processor, the image as an ``{"type": "image"}`` part of its user turn."""
        out = []
        for turn in turns:
            content = [{"type": "text", "text": turn.text}]
            if turn.image is not None:
                content.insert(0, {"type": "image"})
            out.append({"role": turn.role, "content": content})
        return out

    def encode(self, turns: Sequence[Turn], image: Image.Image | None) -> EncodedPrompt:
        inputs = self.processor(images=[image], text=[self.conversation(turns)], padding_side="left")
        inputs = inputs.to(self.model.device, self.model.dtype)
        ids, mask, pixels = inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"]
        # The model lays the ids out again, and re-laying out laid-out ids keeps their width and adds the visual
        # slots once more (as padding): hand it the placeholder-free ids (one placeholder kept for "token"
        # placement, where it marks the spot), so the prompt takes exactly its own positions in the cache.
        config = self.model.config
        is_image = ids[0] == config.image_token_index
        if bool(is_image.any()):
            keep = ~is_image
            if config.image_placement == "token":
                keep[int(is_image.nonzero()[0])] = True
            ids, mask = ids[:, keep], mask[:, keep]
        image_mask = None if pixels is None else torch.ones(1, dtype=torch.bool, device=ids.device)
        length = self.model.layout(ids, mask, image_mask=image_mask, padding_side="left").input_ids.shape[1]
        return EncodedPrompt(ids, mask, pixels, int(length), image)


def collate(prompts: Sequence[EncodedPrompt], pad_token_id: int) -> dict:
    """Left-pad prompts into one batch for ``GenerationSession.add`` (``image_mask`` when only some have images)."""
    first = prompts[0].input_ids
    ids = pad_sequence([prompt.input_ids[0] for prompt in prompts], batch_first=True, padding_value=pad_token_id,
                       padding_side="left")
    mask = pad_sequence([prompt.attention_mask[0] for prompt in prompts], batch_first=True, padding_side="left")
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
