"""``MFRSVLMProcessor`` (the package's parts: `prompts`, `settings`, `images`): images and questions (or LLaVA / OpenAI-style conversations) → the model's inputs, and
generated ids → text, the way users of transformers' ``LlavaProcessor`` expect it::

    processor = MFRSVLMProcessor.from_pretrained(folder)     # any folder MFRSVLM reads; config and tokenizer only
    inputs = processor(images=[image, None], text=["How many ships?", "Say hi."]).to(model.device, model.dtype)
    answers = processor.batch_decode(model.generate(**inputs, max_new_tokens=64))

The sequence layout is decided here, once: ``input_ids`` come back already laid out by
``rsfuse.model.layout.layout_sequence`` with the model's settings (``image_token_index`` at each of the
``num_visual_tokens`` visual slots, prefix or token placement, left padding for generation, right for training) and
``visual_positions [B, N]`` says where the slots are, so ``MFRSVLM.forward`` / ``generate`` only scatter the image
features there (they lay out raw ids themselves only when ``visual_positions`` is absent). ``image_mask`` comes
back when a batch mixes samples with and without an image. ``pack`` lays out prompts tokenized earlier (the server).

Prompts are the conversation template's (``vicuna_v1`` unless the folder records another): a question is one user
turn with the image (``<image>\\n`` in front, LLaVA's rule); a conversation of ``{"from": "human"|"gpt", "value"}``
or ``{"role": "user"|"assistant"|"system", "content"}`` turns gives a multi-turn prompt that ends with the
assistant's turn open (``add_generation_prompt=True``), or, ending with an answer and ``return_labels=True``,
training ids with ``labels`` (prompt tokens −100, as ``tokenize_conversation`` gives them).

Settings read by ``from_pretrained`` (never the weights): the model's ``config.json`` — rsfuse folder
(``rsfuse_mfrsvlm``), released MF-RSVLM (``mfrsvlm`` / ``vhm``, tower config in ``vision_tower/``) or transformers'
LLaVA (``llava``: in-vocabulary image token, token placement) — then rsfuse's ``processor_config.json`` on top (the
template, and the full image settings when ``save_pretrained`` wrote it), and ``image_mean`` / ``image_std`` of an
HF ``preprocessor_config.json`` when present. Images are padded to a square with the mean colour and resized
(LLaVA-1.5's ``pad`` preprocessing; llava-hf's own processor centre-crops instead).
"""

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from rsfuse.data.images import CLIP_MEAN, CLIP_STD
from rsfuse.data.instructions import InstructionSample
from rsfuse.data.preprocess import ImageProcessor
from rsfuse.llm.templates import IGNORE_INDEX, ConversationTemplate, get_template, tokenize_conversation, tokenize_prompt
from rsfuse.llm.tokenizer import IMAGE_TOKEN_INDEX, Tokenizer
from rsfuse.options import DEFAULT_TEMPLATE, IMAGE_PLACEMENTS, PADDING_SIDES, check_option
from rsfuse.processor.batch import SampleCollator
from rsfuse.processor.images import to_image
from rsfuse.processor.prompts import prompt_text, template_and_rounds
from rsfuse.processor.settings import (
    PREPROCESSOR_CONFIG_FILE,
    PROCESSOR_CLASS,
    PROCESSOR_CONFIG_FILE,
    SETTINGS,
    model_config,
    read_json_object,
    settings_from_config,
)

__all__ = ["MFRSVLMProcessor", "ProcessorInputs"]


class ProcessorInputs(dict):
    """The processor's output: a dict for ``model(**inputs)`` / ``model.generate(**inputs)`` (``pixel_values`` is
    None for an all-text batch). ``.to(device, dtype)`` moves every tensor and casts ``pixel_values`` to ``dtype``."""

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "ProcessorInputs":
        moved = ProcessorInputs()
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                value = value.to(device=device, dtype=dtype if value.is_floating_point() else None)
            moved[key] = value
        return moved


# ---------------------------------------------------------------------------------------------------- processor


class MFRSVLMProcessor:
    """Tokenizer + image preprocessing + sequence layout for ``MFRSVLM``; see the module docstring.

    Build it with :meth:`from_pretrained` (a folder) or :meth:`from_model` (a loaded model and its tokenizer).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        image_size: int,
        num_visual_tokens: int,
        image_token_index: int = IMAGE_TOKEN_INDEX,
        image_placement: str = "prefix",
        pad_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        max_length: int | None = None,
        template: str | ConversationTemplate = DEFAULT_TEMPLATE,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
    ) -> None:
        if not isinstance(tokenizer, Tokenizer):
            raise ValueError(f"tokenizer must be an rsfuse.llm.Tokenizer, got {type(tokenizer).__name__}")
        for name, value in (("image_size", image_size), ("num_visual_tokens", num_visual_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        check_option(image_placement, IMAGE_PLACEMENTS, "image_placement")
        try:
            self.template = get_template(template)
        except KeyError as error:
            raise ValueError(f"template: {error.args[0]}") from None
        self.tokenizer = tokenizer
        self.image_processor = ImageProcessor(image_size, mean=image_mean, std=image_std)
        self.num_visual_tokens = num_visual_tokens
        self.image_token_index = int(image_token_index)
        self.image_placement = image_placement
        self.pad_token_id = tokenizer.pad_id if pad_token_id is None else int(pad_token_id)
        eos = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        self.eos_token_ids = tuple(dict.fromkeys([tokenizer.eos_id, *(int(token) for token in eos)]))
        self.max_length = max_length

    # ----- construction ----------------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.image_processor.image_size

    @classmethod
    def from_config(
        cls, config: Any, tokenizer: Tokenizer, *, template: str | ConversationTemplate | None = None
    ) -> "MFRSVLMProcessor":
        """The processor of a model with ``config`` (an ``MFRSVLMConfig``)."""
        return cls(tokenizer, template=template or DEFAULT_TEMPLATE, **settings_from_config(config))

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Tokenizer | str | os.PathLike | None = None,
        *,
        template: str | ConversationTemplate | None = None,
    ) -> "MFRSVLMProcessor":
        """The processor of a loaded ``MFRSVLM``; ``tokenizer`` None = the one it was loaded with, ``template`` None =
        the one its folder recorded, else ``vicuna_v1``."""
        if tokenizer is None:
            if model.tokenizer_path is None:
                raise ValueError("tokenizer: the model was not loaded with a tokenizer.model; pass one")
            tokenizer = model.tokenizer_path
        if not isinstance(tokenizer, Tokenizer):
            tokenizer = Tokenizer.from_pretrained(tokenizer)
        recorded = getattr(model, "chat_template", None)
        return cls.from_config(model.config, tokenizer, template=template or recorded)

    @classmethod
    def from_pretrained(
        cls,
        id_or_dir: str | os.PathLike,
        *,
        template: str | ConversationTemplate | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
    ) -> "MFRSVLMProcessor":
        """Read ``tokenizer.model`` and the settings of a model folder (rsfuse, released MF-RSVLM, llava-hf) or of a
        folder ``save_pretrained`` wrote, or of a Hub repository id (its config and tokenizer files only; see
        `MFRSVLM.from_pretrained`). ``template`` overrides the recorded one (default ``vicuna_v1``)."""
        from rsfuse.checkpoints.hub import resolve_model  # noqa: PLC0415

        folder = resolve_model(id_or_dir, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                               need="processor").path
        settings: dict[str, Any] = {}
        if (folder / "config.json").is_file():
            settings.update(settings_from_config(model_config(folder)))
        preprocessor = folder / PREPROCESSOR_CONFIG_FILE
        if preprocessor.is_file():
            data = read_json_object(preprocessor)
            settings.update({key: data[key] for key in ("image_mean", "image_std") if key in data})
        own = folder / PROCESSOR_CONFIG_FILE
        if own.is_file():
            data = read_json_object(own)
            if data.get("processor_class") == PROCESSOR_CLASS:  # transformers' LlavaProcessor writes the same name
                unknown = sorted(set(data) - set(SETTINGS) - {"processor_class"})
                if unknown:
                    raise ValueError(f"{own}: unknown field(s) {unknown}")
                settings.update({key: value for key, value in data.items() if key != "processor_class"})
        missing = [key for key in ("image_size", "num_visual_tokens") if key not in settings]
        if missing:
            raise FileNotFoundError(
                f"{folder}: neither a model config.json nor an rsfuse {PROCESSOR_CONFIG_FILE} gives {missing}"
            )
        if template is not None:
            settings["template"] = template
        return cls(Tokenizer.from_pretrained(folder), **settings)

    def settings(self) -> dict[str, Any]:
        """What ``save_pretrained`` records (with the tokenizer, everything ``from_pretrained`` needs)."""
        return {
            "processor_class": PROCESSOR_CLASS,
            "template": self.template.name,
            "image_size": self.image_size,
            "image_mean": list(self.image_processor.mean),
            "image_std": list(self.image_processor.std),
            "num_visual_tokens": self.num_visual_tokens,
            "image_token_index": self.image_token_index,
            "image_placement": self.image_placement,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": list(self.eos_token_ids),
            "max_length": self.max_length,
        }

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.model`` (+ ``tokenizer_config.json``) and ``processor_config.json`` into ``path``."""
        from rsfuse.llm.templates import TEMPLATES  # noqa: PLC0415

        if TEMPLATES.get(self.template.name) != self.template:
            raise ValueError(
                f"template: only named templates can be saved ({sorted(TEMPLATES)}), got {self.template.name!r}"
            )
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / PROCESSOR_CONFIG_FILE
        if target.is_file() and read_json_object(target).get("processor_class", PROCESSOR_CLASS) != PROCESSOR_CLASS:
            raise ValueError(f"{target}: holds another processor's settings (transformers'?); save elsewhere")
        self.tokenizer.save_pretrained(folder)
        target.write_text(json.dumps(self.settings(), indent=2) + "\n")
        return folder

    def __repr__(self) -> str:
        return (
            f"MFRSVLMProcessor(template={self.template.name!r}, image_size={self.image_size}, "
            f"num_visual_tokens={self.num_visual_tokens}, image_token_index={self.image_token_index}, "
            f"placement={self.image_placement!r}, tokenizer={self.tokenizer!r})"
        )

    # ----- images ----------------------------------------------------------------------------------------------
    def preprocess_images(self, images: Sequence[Any]) -> torch.Tensor:
        """``[B, 3, S, S]`` normalised pixels of ``images`` (PIL images, arrays or paths)."""
        return torch.stack([self.image_processor(to_image(image, f"images[{i}]")) for i, image in enumerate(images)])

    def collator(self, padding_side: str = "right") -> SampleCollator:
        """The training collate: `rsfuse.data.InstructionSample`s → a batch laid out as :meth:`__call__` lays it out
        (``image_mask`` always present, ``labels`` included; see `rsfuse.processor.batch.SampleCollator`)."""
        return SampleCollator(num_visual_tokens=self.num_visual_tokens, image_token_index=self.image_token_index,
                              pad_token_id=self.pad_token_id, placement=self.image_placement, padding_side=padding_side)

    # ----- text ------------------------------------------------------------------------------------------------
    @staticmethod
    def _batch_texts(text: Any) -> list[Any]:
        if text is None:
            raise ValueError("text: a question, a list of questions or a conversation is needed")
        if isinstance(text, str):
            return [text]
        if isinstance(text, Sequence) and text and all(isinstance(item, Mapping) for item in text):
            return [text]  # one conversation
        if isinstance(text, Sequence) and not isinstance(text, bytes) and text:
            for index, item in enumerate(text):
                if not isinstance(item, (str, Sequence)) or isinstance(item, bytes):
                    raise ValueError(
                        f"text[{index}]: expected a question string or a conversation (list of turns), "
                        f"got {type(item).__name__}"
                    )
            return list(text)
        raise ValueError(f"text: expected a string, a list of strings or conversations, got {text!r}")

    @staticmethod
    def _batch_images(images: Any, count: int) -> list[Any]:
        if images is None:
            return [None] * count
        if isinstance(images, (list, tuple)):
            images = list(images)
        else:
            images = [images]
        if len(images) != count:
            raise ValueError(
                f"images: {len(images)} image(s) for {count} text sample(s); give one per sample (None for none)"
            )
        return images

    def _sample_ids(
        self, text: Any, index: int, *, has_image: bool, add_generation_prompt: bool, return_labels: bool
    ) -> tuple[list[int], list[int] | None]:
        where = f"text[{index}]"
        conversation: Sequence[Any] = [{"from": "human", "value": text}] if isinstance(text, str) else text
        template, rounds = template_and_rounds(self.template, conversation, where, has_image=has_image)
        if return_labels:
            if rounds[-1][1] is None:
                raise ValueError(f"{where}: return_labels needs a conversation that ends with the assistant's answer")
            turns = [
                {"from": speaker, "value": value}
                for question, answer in rounds
                for speaker, value in (("human", question), ("gpt", answer))
            ]
            tokenized = tokenize_conversation(turns, self.tokenizer, template)
            return tokenized.input_ids, tokenized.labels
        try:
            prompt = prompt_text(template, rounds, open_turn=add_generation_prompt)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        return tokenize_prompt(prompt, self.tokenizer), None

    def prompt_ids(self, text: Any, *, has_image: bool, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of one question or conversation's prompt, before layout (−200 where the image goes): what
        :meth:`pack` takes."""
        return self._sample_ids(text, 0, has_image=has_image, add_generation_prompt=add_generation_prompt,
                                return_labels=False)[0]

    # ----- the call ----------------------------------------------------------------------------------------------
    def __call__(
        self,
        images: Any = None,
        text: Any = None,
        *,
        padding_side: str = "left",
        add_generation_prompt: bool = True,
        return_labels: bool = False,
    ) -> ProcessorInputs:
        """Model inputs for a batch: ``pixel_values`` (``[B, 3, S, S]``, zeros for text-only rows; None for an
        all-text batch), laid-out ``input_ids`` and ``attention_mask`` (``[B, T]``, long), ``image_mask`` (``[B]``
        bool, only for a batch mixing image and text-only samples) and with ``return_labels`` ``labels``.

        ``padding_side="left"`` for generation, ``"right"`` for training / scoring."""
        check_option(padding_side, PADDING_SIDES, "padding_side")
        texts = self._batch_texts(text)
        images = self._batch_images(images, len(texts))
        has_image = [image is not None for image in images]
        ids, labels = [], []
        for index, (sample, with_image) in enumerate(zip(texts, has_image)):
            sample_ids, sample_labels = self._sample_ids(
                sample, index, has_image=with_image, add_generation_prompt=add_generation_prompt,
                return_labels=return_labels,
            )
            ids.append(sample_ids)
            labels.append(sample_labels)
        pixels = [None if image is None else self.image_processor(to_image(image, f"images[{row}]"))
                  for row, image in enumerate(images)]
        return self.pack(ids, pixels, labels=labels if return_labels else None, padding_side=padding_side)

    def pack(
        self,
        token_ids: Sequence[Sequence[int]],
        pixel_values: Sequence[torch.Tensor | None] | None = None,
        *,
        labels: Sequence[Sequence[int]] | None = None,
        padding_side: str = "left",
    ) -> ProcessorInputs:
        """Model inputs for prompts tokenized earlier (ids as `tokenize_prompt` gives them: −200 where the image goes)
        and their preprocessed images (``[3, S, S]`` or ``[1, 3, S, S]`` each, None for a text-only prompt): padded
        and laid out exactly as :meth:`__call__` does (the server encodes prompts one at a time and batches them
        later). The output: ``pixel_values`` (None for an all-text batch), laid-out ``input_ids``, ``attention_mask``
        (long), ``visual_positions`` (``[B, N]`` sequence index of each visual slot, when a row has an image),
        ``image_mask`` (only for a batch mixing image and text-only rows), and ``labels`` when given."""
        check_option(padding_side, PADDING_SIDES, "padding_side")
        pixel_values = [None] * len(token_ids) if pixel_values is None else list(pixel_values)
        if len(pixel_values) != len(token_ids) or (labels is not None and len(labels) != len(token_ids)):
            raise ValueError(f"pack: {len(token_ids)} prompts, {len(pixel_values)} images"
                             + ("" if labels is None else f", {len(labels)} label rows"))
        samples = []
        for index, ids in enumerate(token_ids):
            pixels = pixel_values[index]
            if pixels is not None and pixels.ndim == 4:
                pixels = pixels[0]
            row_labels = [IGNORE_INDEX] * len(ids) if labels is None else labels[index]
            samples.append(InstructionSample(input_ids=torch.tensor(ids, dtype=torch.long),
                                             labels=torch.tensor(row_labels, dtype=torch.long),
                                             pixel_values=pixels, index=index, sample_id=None))
        batch = self.collator(padding_side)(samples)
        out = ProcessorInputs(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                              attention_mask=batch["attention_mask"])
        if batch["visual_positions"] is not None:
            out["visual_positions"] = batch["visual_positions"]
            if not bool(batch["image_mask"].all()):
                out["image_mask"] = batch["image_mask"]
        if labels is not None:
            out["labels"] = batch["labels"]
        return out

    def sequence_length(self, token_ids: Sequence[int], *, has_image: bool) -> int:
        """Positions one tokenized prompt takes in the decoder once laid out (what the context limit counts)."""
        return self.collator("left").sequence_length(token_ids, has_image=has_image)

    # ----- decoding ----------------------------------------------------------------------------------------------
    def batch_decode(self, ids: Any, skip_special_tokens: bool = True) -> list[str]:
        """Text of each row of ``ids`` (a ``[B, T]`` tensor or lists): cut after the first EOS, padding at either end
        dropped; ``skip_special_tokens`` also drops BOS/EOS/UNK, the image token and ids beyond the tokenizer's
        vocabulary (added tokens of a larger model vocabulary). Leading/trailing spaces stripped."""
        rows = ids.tolist() if isinstance(ids, torch.Tensor) else [list(row) for row in ids]
        if rows and not isinstance(rows[0], list):
            raise ValueError("batch_decode: ids must be [B, T], got a flat sequence; use decode() for one row")
        return [self._decode_row([int(token) for token in row], skip_special_tokens) for row in rows]

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        """Text of one sequence of ids (see :meth:`batch_decode`)."""
        row = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return self._decode_row([int(token) for token in row], skip_special_tokens)

    def _decode_row(self, row: list[int], skip_special_tokens: bool) -> str:
        eos = set(self.eos_token_ids)
        for position, token in enumerate(row):
            if token in eos:
                row = row[: position + 1]
                break
        start, end = 0, len(row)
        while start < end and row[start] == self.pad_token_id:
            start += 1
        while end > start and row[end - 1] == self.pad_token_id:
            end -= 1
        row = [IMAGE_TOKEN_INDEX if token == self.image_token_index else token for token in row[start:end]]
        vocab = self.tokenizer.vocab_size
        if skip_special_tokens:
            row = [token for token in row if token == IMAGE_TOKEN_INDEX or 0 <= token < vocab]
        return self.tokenizer.decode(row, skip_special=skip_special_tokens).strip()
