"""From a checked request to model inputs, and from generated tokens back to text.

`PromptEncoder.encode` turns a conversation and its image into token ids and pixels (``MFRSVLMProcessor``: template,
tokenizer, image preprocessing); `PromptEncoder.batch` hands several encoded prompts to ``MFRSVLMProcessor.pack``,
which pads and lays them out into one ``GenerationSession.add`` batch (the processor is the only code that decides
where visual positions go);
`TextStream` turns a row's growing token list into text deltas, cut at the first stop string and holding back
what could still become one or a half-decoded UTF-8 character (dropped if the answer ends inside it).
"""

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from PIL import Image

from rsfuse.serve.protocol import Turn

__all__ = ["EncodedPrompt", "PromptEncoder", "TextStream"]

PROBE_TEXT = "Wie viele Schiffe? ¿Cuántos? 船は何隻 🛰 ~|\t"  # characters no small vocabulary holds


@dataclass
class EncodedPrompt:
    """One prompt before layout: ``token_ids`` (−200 where the image goes), ``pixel_values`` ``[1, 3, S, S]`` or
    None; ``length`` = the positions it takes in the decoder once laid out (the processor's count)."""

    token_ids: list[int]
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
        tokenizer = processor.tokenizer
        # The most characters one token can stand for: a text of n characters needs >= n / longest_piece tokens.
        self.longest_piece = max(len(tokenizer.id_to_piece(i)) for i in range(tokenizer.vocab_size))

    @classmethod
    def for_model(cls, model, tokenizer=None, *, template: str | None = None) -> "PromptEncoder":
        """From a loaded model (``tokenizer`` None: the one it was loaded with; ``template`` None: the recorded one,
        else ``vicuna_v1``)."""
        from rsfuse.processor import MFRSVLMProcessor  # noqa: PLC0415

        return cls(model, MFRSVLMProcessor.from_model(model, tokenizer, template=template))

    def check(self) -> None:
        """Refuse, once and in one line, a tokenizer that cannot encode every text: a SentencePiece model without
        byte fallback fails on any character outside its vocabulary, so every request would be refused."""
        try:
            self.processor.prompt_ids(self.conversation([Turn("user", PROBE_TEXT)]), has_image=False)
        except ValueError as error:
            raise ValueError(f"the tokenizer {self.processor.tokenizer.source} cannot encode text outside its "
                             f"vocabulary (no byte fallback?), so it cannot serve arbitrary questions: "
                             f"{str(error).splitlines()[0][:200]}") from None

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
        processor = self.processor
        token_ids = processor.prompt_ids(self.conversation(turns), has_image=image is not None)
        pixels = None
        if image is not None:
            pixels = processor.preprocess_images([image]).to(self.model.device, self.model.dtype)
        length = processor.sequence_length(token_ids, has_image=image is not None)
        return EncodedPrompt(token_ids, pixels, length, image)

    def batch(self, prompts: Sequence[EncodedPrompt]) -> dict:
        """Several prompts as one left-padded, laid-out batch for ``GenerationSession.add`` (``**batch``)."""
        inputs = self.processor.pack([prompt.token_ids for prompt in prompts],
                                     [prompt.pixel_values for prompt in prompts], padding_side="left")
        return dict(inputs.to(self.model.device, self.model.dtype))


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
        elif final:  # an answer cut inside a multi-byte character: its incomplete bytes are dropped
            text = text.rstrip("\ufffd")
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
