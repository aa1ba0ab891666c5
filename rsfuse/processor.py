"""``MFRSVLMProcessor``: images and questions (or LLaVA / OpenAI-style conversations) → the model's inputs, and
generated ids → text, the way users of transformers' ``LlavaProcessor`` expect it::

    processor = MFRSVLMProcessor.from_pretrained(folder)     # any folder MFRSVLM reads; config and tokenizer only
    inputs = processor(images=[image, None], text=["How many ships?", "Say hi."]).to(model.device, model.dtype)
    answers = processor.batch_decode(model.generate(**inputs, max_new_tokens=64))

The sequence layout is decided here, once: ``input_ids`` come back already laid out by
``rsfuse.model.layout.layout_sequence`` with the model's settings (``image_token_index`` at each of the
``num_visual_tokens`` visual slots, prefix or token placement, left padding for generation, right for training), so
``MFRSVLM.forward`` / ``generate`` (which re-apply the same function, a no-op on laid-out ids) see exactly the
positions the processor returned. ``image_mask`` comes back when a batch mixes samples with and without an image.

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

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsfuse.data.images import CLIP_MEAN, CLIP_STD, ImageProcessor, stretch_to_uint8
from rsfuse.llm.templates import (
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    ConversationTemplate,
    get_template,
    tokenize_conversation,
    tokenize_prompt,
)
from rsfuse.llm.tokenizer import IMAGE_TOKEN_INDEX, Tokenizer
from rsfuse.model.layout import layout_sequence

__all__ = ["MFRSVLMProcessor", "ProcessorInputs", "PROCESSOR_CONFIG_FILE", "prompt_token_ids"]

PROCESSOR_CONFIG_FILE = "processor_config.json"
PREPROCESSOR_CONFIG_FILE = "preprocessor_config.json"
PROCESSOR_CLASS = "MFRSVLMProcessor"
DEFAULT_TEMPLATE = "vicuna_v1"
_SETTINGS = (
    "image_size", "image_mean", "image_std", "num_visual_tokens", "image_token_index", "image_placement",
    "pad_token_id", "eos_token_id", "max_length", "template",
)
_USER_ROLES = {"human": "user", "user": "user"}
_ASSISTANT_ROLES = {"gpt": "assistant", "assistant": "assistant"}


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


# ---------------------------------------------------------------------------------------------------- prompt text


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


def _prompt_text(template: ConversationTemplate, rounds: list[tuple[str, str | None]], *, open_turn: bool) -> str:
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
    template, rounds = _template_and_rounds(get_template(template), conversation, "text", has_image=has_image)
    return tokenize_prompt(_prompt_text(template, rounds, open_turn=add_generation_prompt), tokenizer)


def _template_and_rounds(
    template: ConversationTemplate, conversation: Sequence[Any], where: str, *, has_image: bool
) -> tuple[ConversationTemplate, list[tuple[str, str | None]]]:
    """The rounds of ``conversation`` and the template with its system text replaced by a system turn, if any."""
    system, rounds = _rounds(conversation, where, has_image=has_image)
    return (template if system is None else dataclasses.replace(template, system=system)), rounds


# ---------------------------------------------------------------------------------------------------- settings


def _pad_id(llm: Any) -> int:
    """``MFRSVLM.pad_token_id``'s rule: the config's pad id, else its (first) EOS, else 0."""
    pad = llm.pad_token_id
    if pad is None:
        eos = llm.eos_token_id
        pad = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0
    return int(pad)


def settings_from_config(config: Any) -> dict[str, Any]:
    """Processor settings implied by an ``MFRSVLMConfig``."""
    eos = config.llm.eos_token_id
    return {
        "image_size": config.input_size,
        "num_visual_tokens": config.num_visual_tokens,
        "image_token_index": config.image_token_index,
        "image_placement": config.image_placement,
        "pad_token_id": _pad_id(config.llm),
        "eos_token_id": list(eos) if isinstance(eos, (list, tuple)) else eos,
        "max_length": config.llm.max_position_embeddings,
    }


def _model_config(folder: Path) -> Any:
    """The ``MFRSVLMConfig`` a model folder describes, from its config files only (no weight is read)."""
    from rsfuse.checkpoints.clip import _hf_config  # noqa: PLC0415
    from rsfuse.checkpoints.io import CheckpointError, read_json  # noqa: PLC0415
    from rsfuse.checkpoints.llava_hf import (  # noqa: PLC0415
        _feature_layer,
        _image_token_id,
        _llm_config,
        _settings,
        _vision_config,
        is_llava_hf_config,
    )
    from rsfuse.checkpoints.mfrsvlm import RELEASED_MODEL_TYPES, VISION_SUBFOLDER, released_config  # noqa: PLC0415
    from rsfuse.checkpoints.rsfuse_folder import RSFUSE_MODEL_TYPE  # noqa: PLC0415
    from rsfuse.model.config import MFRSVLMConfig  # noqa: PLC0415

    path = folder / "config.json"
    data = read_json(path)
    model_type = data.get("model_type")
    try:
        if model_type == RSFUSE_MODEL_TYPE:
            skip = ("model_type", "architectures", "torch_dtype")
            return MFRSVLMConfig.from_dict({key: value for key, value in data.items() if key not in skip})
        if model_type in RELEASED_MODEL_TYPES:
            vision = _hf_config(folder / VISION_SUBFOLDER / "config.json")
            return MFRSVLMConfig.from_dict(released_config(data, vision, path=path))
        if model_type == "llava" and is_llava_hf_config(data):
            _settings(data, path)
            llm = _llm_config(data, path)
            return MFRSVLMConfig(
                vision=_vision_config(data, path),
                llm=llm,
                global_layer=_feature_layer(data, path),
                detail=False,
                injection_layers=(),
                image_placement="token",
                image_token_index=_image_token_id(data, llm.vocab_size, path),
            )
    except (TypeError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{path}: {error}") from None
    raise CheckpointError(
        f"{path}: model_type {model_type!r} is not a folder MFRSVLMProcessor reads (rsfuse 'rsfuse_mfrsvlm', released "
        "'mfrsvlm'/'vhm', transformers 'llava'); build one with MFRSVLMProcessor.from_model(model, tokenizer)"
    )


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


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
        if image_placement not in ("prefix", "token"):
            raise ValueError(f"image_placement must be 'prefix' or 'token', got {image_placement!r}")
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
        cls, path: str | os.PathLike, *, template: str | ConversationTemplate | None = None
    ) -> "MFRSVLMProcessor":
        """Read ``tokenizer.model`` and the settings of a model folder (rsfuse, released MF-RSVLM, llava-hf) or of a
        folder ``save_pretrained`` wrote. ``template`` overrides the recorded one (default ``vicuna_v1``)."""
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder")
        settings: dict[str, Any] = {}
        if (folder / "config.json").is_file():
            settings.update(settings_from_config(_model_config(folder)))
        preprocessor = folder / PREPROCESSOR_CONFIG_FILE
        if preprocessor.is_file():
            data = _read_json_object(preprocessor)
            settings.update({key: data[key] for key in ("image_mean", "image_std") if key in data})
        own = folder / PROCESSOR_CONFIG_FILE
        if own.is_file():
            data = _read_json_object(own)
            if data.get("processor_class") == PROCESSOR_CLASS:  # transformers' LlavaProcessor writes the same name
                unknown = sorted(set(data) - set(_SETTINGS) - {"processor_class"})
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
        if target.is_file() and _read_json_object(target).get("processor_class", PROCESSOR_CLASS) != PROCESSOR_CLASS:
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
    def _pil(self, image: Any, where: str):
        from PIL import Image  # noqa: PLC0415

        if isinstance(image, (str, os.PathLike)):
            return Path(image)
        if isinstance(image, Image.Image):
            return image
        if isinstance(image, np.ndarray):
            array = image
            if array.ndim == 3 and array.shape[-1] == 1:
                array = array[..., 0]
            if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
                raise ValueError(
                    f"{where}: an array must be H×W or H×W×C with C in (1, 3, 4), got shape {tuple(image.shape)}"
                )
            if min(array.shape[:2]) < 1:
                raise ValueError(f"{where}: empty image of shape {tuple(image.shape)}")
            if array.dtype == np.uint8:
                pass
            elif np.issubdtype(array.dtype, np.floating):
                if not np.isfinite(array).all():
                    raise ValueError(f"{where}: the float image holds NaN or inf")
                low, high = float(array.min()), float(array.max())
                if low < 0.0 or high > 1.0:
                    raise ValueError(f"{where}: float images must hold values in [0, 1], got [{low:g}, {high:g}]")
                array = np.rint(array * 255.0).astype(np.uint8)
            elif np.issubdtype(array.dtype, np.integer):
                array = stretch_to_uint8(array)  # as load_image does for > 8-bit files
            else:
                raise ValueError(f"{where}: arrays of dtype {array.dtype} are not images (uint8, integer or float)")
            return Image.fromarray(np.ascontiguousarray(array))
        raise ValueError(
            f"{where}: expected a PIL image, a numpy array (H×W×C uint8, or float in [0, 1]), a file path or None; "
            f"got {type(image).__name__}"
        )

    def preprocess_images(self, images: Sequence[Any]) -> torch.Tensor:
        """``[B, 3, S, S]`` normalised pixels of ``images`` (PIL images, arrays or paths)."""
        return torch.stack([self.image_processor(self._pil(image, f"images[{i}]")) for i, image in enumerate(images)])

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
        template, rounds = _template_and_rounds(self.template, conversation, where, has_image=has_image)
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
            prompt = _prompt_text(template, rounds, open_turn=add_generation_prompt)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        return tokenize_prompt(prompt, self.tokenizer), None

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
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        texts = self._batch_texts(text)
        images = self._batch_images(images, len(texts))
        has_image = [image is not None for image in images]
        ids, labels = [], []
        for index, (sample, with_image) in enumerate(zip(texts, has_image)):
            sample_ids, sample_labels = self._sample_ids(
                sample, index, has_image=with_image, add_generation_prompt=add_generation_prompt,
                return_labels=return_labels,
            )
            ids.append([self.image_token_index if token == IMAGE_TOKEN_INDEX else token for token in sample_ids])
            labels.append(sample_labels)
        width = max(len(row) for row in ids)
        input_ids = torch.full((len(ids), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), width), dtype=torch.bool)
        label_tensor = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long) if return_labels else None
        for row, sample_ids in enumerate(ids):
            input_ids[row, : len(sample_ids)] = torch.tensor(sample_ids, dtype=torch.long)
            attention_mask[row, : len(sample_ids)] = True
            if label_tensor is not None:
                label_tensor[row, : len(sample_ids)] = torch.tensor(labels[row], dtype=torch.long)
        any_image = any(has_image)
        image_mask = torch.tensor(has_image, dtype=torch.bool) if any_image else None
        layout = layout_sequence(
            input_ids,
            attention_mask,
            label_tensor,
            image_mask=image_mask,
            num_visual_tokens=self.num_visual_tokens,
            image_token_id=self.image_token_index,
            pad_token_id=self.pad_token_id,
            placement=self.image_placement,
            padding_side=padding_side,
        )
        pixel_values = None
        if any_image:
            size = self.image_size
            pixel_values = torch.zeros((len(images), 3, size, size), dtype=torch.float32)
            for row, image in enumerate(images):
                if image is not None:
                    pixel_values[row] = self.image_processor(self._pil(image, f"images[{row}]"))
        out = ProcessorInputs(
            pixel_values=pixel_values, input_ids=layout.input_ids, attention_mask=layout.attention_mask.long()
        )
        if any_image and not all(has_image):
            out["image_mask"] = image_mask
        if return_labels:
            out["labels"] = layout.labels
        return out

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
