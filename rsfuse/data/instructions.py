"""LLaVA / VHM instruction data: a dataset that tokenizes, masks and loads images, and the batch collation.

Records: ``{"id"?, "image"?, "source_dataset"?, "conversations": [{"from": "human"|"gpt", "value": ...}, ...]}``.
The image is ``image_root / source_dataset / image`` when that file exists, else ``image_root / image``.

Checks happen in two places. At construction the JSON and every record's structure (fields, speakers, turn order,
``<image>`` placement) are checked. At ``__getitem__`` the conversation is tokenized and the image loaded. A bad sample
raises :class:`InstructionDataError` naming its index, id and reason; with ``skip_bad=True`` it is skipped instead
(structure errors at construction; later errors by serving the next good sample in order) and counted per reason.
Independently of ``skip_bad``, a sample cut at ``max_length`` so that no answer token is left is never trained on: it is
dropped the same way and counted. ``report()`` summarises all of this; call ``scan()`` to check every sample up front
(counts made inside DataLoader worker processes stay in those processes), or ``preflight()`` for the training recipe's
cheap check before the first step (tokenization plus every image's existence, header and size, with a progress bar;
the samples it finds bad are removed from the dataset with ``skip_bad``, else the first one raises).

Image paths must stay inside ``image_root``: an absolute path or one whose ``..`` climbs out of the root is a bad
sample (reason ``image_outside_root``) unless ``allow_outside_root=True``.
"""

import json
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from rsfuse._typing import Float, Tensor
from rsfuse.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image, probe_image
from rsfuse.llm.templates import (
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    IMAGE_TOKEN_INDEX,
    ConversationError,
    ConversationTemplate,
    TokenizationMismatchError,
    TokenizedConversation,
    get_template,
    tokenize_conversation,
    validate_conversation,
)
from rsfuse.llm.tokenizer import Tokenizer
from rsfuse.options import PADDING_SIDES, check_option

__all__ = ["InstructionDataError", "InstructionDataset", "InstructionSample", "collate", "merge_turns_by_image"]

MALFORMED = "malformed_record"
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
MISMATCH = "tokenization_mismatch"
NOTHING_TO_TRAIN = "truncated_to_nothing"
IMAGE_CUT = "image_truncated"
OUTSIDE_ROOT = "image_outside_root"


def merge_turns_by_image(records: Sequence[dict], *, shuffle_seed: int | None = None) -> list[dict]:
    """One multi-turn record per image: the conversations of the records that share an ``image`` (and
    ``source_dataset``), concatenated in file order — or, with ``shuffle_seed``, in an order drawn per image from
    ``(shuffle_seed, image)``, so no question type always comes first and none can always lean on earlier answers —
    with ``<image>`` in the first human turn only. The merged record has the first record's ``id`` and the ids it
    holds in ``merged_ids``; records without an image are kept as they are. A training choice, not a new dataset:
    every answer is still trained on, several per sample."""
    merged: dict[tuple, dict] = {}
    out: list[dict] = []
    for index, record in enumerate(records):
        if not isinstance(record, dict) or "conversations" not in record:
            raise ValueError(f"merge_turns_by_image: record {index} is not a LLaVA record with 'conversations'")
        if not record.get("image"):
            out.append(record)
            continue
        key = (record.get("source_dataset"), record["image"])
        turns = [dict(turn, value=turn["value"].replace(IMAGE_PLACEHOLDER, "").strip())
                 if turn["from"] == "human" else dict(turn) for turn in record["conversations"]]
        if key not in merged:
            merged[key] = {"id": record.get("id"), "image": record["image"], "conversations": [], "merged_ids": []}
            if record.get("source_dataset"):
                merged[key]["source_dataset"] = record["source_dataset"]
            out.append(merged[key])
        merged[key]["conversations"].extend(turns)
        merged[key]["merged_ids"].append(record.get("id"))
    for key, entry in merged.items():
        if shuffle_seed is not None:
            turns = entry["conversations"]
            exchanges = [turns[start : start + 2] for start in range(0, len(turns), 2)]
            random.Random(f"{shuffle_seed}:{key}").shuffle(exchanges)
            entry["conversations"] = [turn for exchange in exchanges for turn in exchange]
        first = entry["conversations"][0]
        first["value"] = f"{IMAGE_PLACEHOLDER}\n{first['value']}"
    return out


class InstructionDataError(ValueError):
    """A sample of an instruction file is unusable; the message names the file, the sample index and id, and why."""


@dataclass
class InstructionSample:
    """One tokenized sample: ``input_ids``/``labels`` Long[T] (``-200`` at the image, ``-100`` where untrained) and
    ``pixel_values`` Float[3, S, S] or ``None`` for a text-only sample."""

    input_ids: Tensor
    labels: Tensor
    pixel_values: Tensor | None
    index: int
    sample_id: str | None


class InstructionDataset(Dataset):
    """Map-style dataset over a LLaVA/VHM JSON file. ``dataset[i]`` is an :class:`InstructionSample`."""

    def __init__(
        self,
        json_path: "str | os.PathLike",
        *,
        image_root: "str | os.PathLike",
        tokenizer: Tokenizer,
        template: "str | ConversationTemplate",
        processor: Callable[[Image.Image], Float[Tensor, "3 size size"]],
        max_length: int,
        skip_bad: bool = False,
        bands: Sequence[int] | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        image_length: int = 576,
        allow_outside_root: bool = False,
    ) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.json_path = Path(json_path)
        self.image_root = Path(image_root)
        self.tokenizer = tokenizer
        self.template = get_template(template)
        self.processor = processor
        self.max_length = max_length
        self.skip_bad = skip_bad
        self.bands = bands
        self.max_pixels = max_pixels
        self.image_length = image_length
        self.allow_outside_root = allow_outside_root
        self._skipped: dict[int, str] = {}  # record position in the file -> reason
        self._examples: dict[str, str] = {}  # reason -> first message
        self._truncated: set[int] = set()
        self._image_token_added = 0
        self.records: list[dict] = []
        self.positions: list[int] = []  # position of each kept record in the file
        data = self._read_json()
        self.num_records = len(data)
        for position, record in enumerate(data):
            try:
                self.records.append(self._check_record(record))
                self.positions.append(position)
            except ConversationError as error:
                self._bad(position, record, MALFORMED, str(error))
                continue
            outside = None if self.allow_outside_root or "image" not in record else self._outside_root(record)
            if outside is not None:
                self.records.pop()
                self.positions.pop()
                self._bad(position, record, OUTSIDE_ROOT,
                          f"image path {outside!r} leaves image_root {str(self.image_root)!r} (absolute or '..'; "
                          "set data.allow_outside_root=true to allow it)")

    # ------------------------------------------------------------------ construction-time checks
    def _read_json(self) -> list:
        if not self.json_path.is_file():
            raise InstructionDataError(f"{self.json_path}: instruction file not found")
        try:
            data = json.loads(self.json_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise InstructionDataError(f"{self.json_path}: not valid JSON at line {error.lineno}, column "
                                       f"{error.colno} ({error.msg})") from None
        except UnicodeDecodeError as error:
            raise InstructionDataError(f"{self.json_path}: not valid JSON (not UTF-8 text: {error.reason} at byte "
                                       f"{error.start})") from None
        if not isinstance(data, list):
            raise InstructionDataError(f"{self.json_path}: expected a JSON list of samples, got {type(data).__name__}")
        return data

    def _check_record(self, record: object) -> dict:
        if not isinstance(record, dict):
            raise ConversationError(f"expected an object, got {type(record).__name__}")
        for key in ("image", "source_dataset"):
            if key in record and not isinstance(record[key], str):
                raise ConversationError(f"field {key!r} must be a string, got {record[key]!r}")
        if "conversations" not in record:
            raise ConversationError("no 'conversations' field")
        conversations = record["conversations"]
        validate_conversation(conversations)
        mentions_image = any(IMAGE_PLACEHOLDER in turn["value"] for turn in conversations)
        if mentions_image and "image" not in record:
            raise ConversationError(f"{IMAGE_PLACEHOLDER} in the conversation but no 'image' field")
        if "image" in record and not mentions_image:
            first = dict(conversations[0], value=IMAGE_PLACEHOLDER + "\n" + conversations[0]["value"])
            record = dict(record, conversations=[first, *conversations[1:]])
            self._image_token_added += 1
        return record

    @staticmethod
    def _outside_root(record: dict) -> str | None:
        """The offending relative path when the record's image path is absolute or climbs out of the root."""
        parts = [record["image"]] if "source_dataset" not in record else [record["source_dataset"], record["image"]]
        for part in (os.path.join(*parts), record["image"]):
            if os.path.isabs(part) or os.path.normpath(part).split(os.sep)[0] == os.pardir:
                return part
        return None

    def _bad(self, position: int, record: object, reason: str, detail: str) -> None:
        sample_id = record.get("id") if isinstance(record, dict) else None
        message = f"{self.json_path}: sample {position} (id {sample_id!r}): {reason}: {detail}"
        if not self.skip_bad and reason != NOTHING_TO_TRAIN:
            raise InstructionDataError(message)
        self._skipped.setdefault(position, reason)
        self._examples.setdefault(reason, message)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, record: dict) -> Path:
        """``root/source_dataset/image`` if it exists, else ``root/image``."""
        if "source_dataset" in record:
            nested = self.image_root / record["source_dataset"] / record["image"]
            if nested.is_file():
                return nested
        return self.image_root / record["image"]

    def __getitem__(self, index: int) -> InstructionSample:
        if not 0 <= index < len(self.records):
            raise IndexError(f"{self.json_path}: index {index} out of range for {len(self.records)} samples")
        for step in range(len(self.records)):
            candidate = (index + step) % len(self.records)
            sample = self._load(candidate)
            if sample is not None:
                return sample
        raise InstructionDataError(f"{self.json_path}: no usable sample left ({self.report()['skipped']})")

    def _tokenize(self, index: int) -> TokenizedConversation | None:
        """Tokenized conversation of the record at ``index``, or ``None`` after recording why it is unusable."""
        position, record = self.positions[index], self.records[index]
        if position in self._skipped:
            return None
        try:
            tokens = tokenize_conversation(
                record["conversations"], self.tokenizer, self.template, max_length=self.max_length
            )
        except ConversationError as error:
            return self._bad(position, record, MALFORMED, str(error))
        except TokenizationMismatchError as error:
            return self._bad(position, record, MISMATCH, str(error))
        if tokens.truncated:
            self._truncated.add(position)
        if tokens.num_trained == 0:
            return self._bad(position, record, NOTHING_TO_TRAIN, f"no answer token left within {self.max_length}")
        if tokens.has_image and IMAGE_TOKEN_INDEX not in tokens.input_ids:
            return self._bad(position, record, IMAGE_CUT, f"the image placeholder is cut off at {self.max_length}")
        return tokens

    def _load(self, index: int) -> InstructionSample | None:
        """The sample at ``index``, or ``None`` after recording why it is skipped or dropped."""
        tokens = self._tokenize(index)
        if tokens is None:
            return None
        position, record = self.positions[index], self.records[index]
        pixel_values = None
        if "image" in record:
            path = self.image_path(record)
            if not path.is_file():
                return self._bad(position, record, MISSING_IMAGE, f"{path} not found")
            try:
                pixel_values = self.processor(load_image(path, multiband_bands=self.bands, max_pixels=self.max_pixels))
            except ImageLoadError as error:
                return self._bad(position, record, UNREADABLE_IMAGE, str(error))
        return InstructionSample(
            input_ids=torch.tensor(tokens.input_ids, dtype=torch.long),
            labels=torch.tensor(tokens.labels, dtype=torch.long),
            pixel_values=pixel_values,
            index=index,
            sample_id=None if record.get("id") is None else str(record["id"]),
        )

    # ------------------------------------------------------------------ statistics
    @property
    def has_image(self) -> list[bool]:
        """Whether each kept sample has an image (for modality-grouped sampling)."""
        return ["image" in record for record in self.records]

    @property
    def lengths(self) -> list[int]:
        """Cheap length estimates (LLaVA's: words of all turns, plus ``image_length`` for an image sample)."""
        return [
            sum(len(turn["value"].split()) for turn in record["conversations"])
            + (self.image_length if "image" in record else 0)
            for record in self.records
        ]

    def scan(self, *, check_images: bool = True) -> dict:
        """Tokenize every sample (and load every image if ``check_images``) now; returns :meth:`report`."""
        for index in range(len(self.records)):
            if check_images:
                self._load(index)
            else:
                self._tokenize(index)
        return self.report()

    def preflight(self, *, progress: bool = False) -> dict:
        """The cheap check before training: tokenize every sample and probe every image (exists, header, size;
        `probe_image`), with a progress bar when ``progress``. A bad sample raises :class:`InstructionDataError`
        naming it, or with ``skip_bad`` is counted and removed from the dataset (indices shift; nothing is served
        twice). Returns :meth:`report`."""
        indices = range(len(self.records))
        if progress:
            from tqdm import tqdm

            indices = tqdm(indices, desc=f"check {self.json_path.name}", dynamic_ncols=True, leave=False)
        for index in indices:
            if self._tokenize(index) is None:
                continue
            record = self.records[index]
            if "image" in record:
                path = self.image_path(record)
                if not path.is_file():
                    self._bad(self.positions[index], record, MISSING_IMAGE, f"{path} not found")
                    continue
                try:
                    probe_image(path, multiband_bands=self.bands, max_pixels=self.max_pixels)
                except ImageLoadError as error:
                    self._bad(self.positions[index], record, UNREADABLE_IMAGE, str(error))
        keep = [index for index, position in enumerate(self.positions) if position not in self._skipped]
        if len(keep) < len(self.records):
            self.records = [self.records[index] for index in keep]
            self.positions = [self.positions[index] for index in keep]
        if not self.records:
            raise InstructionDataError(f"{self.json_path}: no usable sample left ({self.report()['skipped']})")
        return self.report()

    def report(self) -> dict:
        """Counts so far: records in the file, kept, skipped/dropped per reason (with one example message each),
        truncated at ``max_length``, and image samples whose ``<image>`` had to be added to the first turn."""
        return {
            "file": str(self.json_path),
            "records": self.num_records,
            "kept": self.num_records - len(self._skipped),
            "skipped": dict(Counter(self._skipped.values())),
            "truncated": len(self._truncated),
            "image_token_added": self._image_token_added,
            "examples": dict(self._examples),
        }


def collate(
    samples: Sequence[InstructionSample], *, pad_id: int, padding_side: str = "right"
) -> dict[str, Tensor | None]:
    """Batch samples: ``input_ids``/``labels``/``attention_mask`` ``[B, T]`` (padded with ``pad_id`` / -100 / 0 on
    ``padding_side``), ``image_mask`` Bool[B], ``pixel_values`` ``[B, 3, S, S]`` (zeros for text-only samples) or
    ``None`` when no sample has an image."""
    if not samples:
        raise ValueError("collate: empty batch")
    check_option(padding_side, PADDING_SIDES, "padding_side")
    input_ids = pad_sequence(
        [sample.input_ids for sample in samples], batch_first=True, padding_value=pad_id, padding_side=padding_side
    )
    labels = pad_sequence(
        [sample.labels for sample in samples], batch_first=True, padding_value=IGNORE_INDEX, padding_side=padding_side
    )
    attention_mask = pad_sequence(
        [torch.ones_like(sample.input_ids) for sample in samples],
        batch_first=True,
        padding_value=0,
        padding_side=padding_side,
    )
    image_mask = torch.tensor([sample.pixel_values is not None for sample in samples], dtype=torch.bool)
    images = [sample.pixel_values for sample in samples if sample.pixel_values is not None]
    pixel_values = None
    if images:
        shapes = {tuple(image.shape) for image in images}
        if len(shapes) != 1:
            raise ValueError(f"collate: images of different shapes in one batch: {sorted(shapes)}")
        blank = torch.zeros_like(images[0])
        pixel_values = torch.stack(
            [blank if sample.pixel_values is None else sample.pixel_values for sample in samples]
        )
    return {
        "pixel_values": pixel_values,
        "image_mask": image_mask,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
    }
