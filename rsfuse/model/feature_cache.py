"""``VisionFeatureCache``: reuse a frozen tower's features of images seen before (training with a frozen tower).

With the tower frozen, an image's global features and detail stacks (before the projector) are a fixed function of
its pixels; the 59 tower passes per image of the two-scale canvas then dominate a small model's training step. The
cache keys each sample by a digest of its pixel bytes, encodes only the samples it has not seen (one batched call) and
keeps the features on their device. It refuses to work while any tower parameter requires a gradient.

``save(path)`` / ``load(path)`` keep the entries in one safetensors file, so that runs sharing a tower and the
canvas settings (``feature_key``) reuse each other's encodings.
"""

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

# MFRSVLMConfig fields that do not change what the tower computes for an image (decoder side only).
DECODER_SIDE_FIELDS = ("llm", "injection_layers", "residual_scale_init", "router_mode", "image_placement",
                       "image_token_index")

__all__ = ["VisionFeatureCache", "feature_key", "map_safetensors"]

Encoder = Callable[[Tensor], tuple[Tensor, Tensor | None]]


def feature_key(model: nn.Module) -> str:
    """Hex digest of what an image's cached features depend on: the tower's weights and every config field except
    the decoder-side ones (``DECODER_SIDE_FIELDS``)."""
    digest = hashlib.blake2b(digest_size=16)
    settings = {key: value for key, value in asdict(model.config).items() if key not in DECODER_SIDE_FIELDS}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.vision_tower.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class VisionFeatureCache:
    """Per-image ``(global [N, C], stacks [K, N, C] or None)`` keyed by the BLAKE2 digest of the pixel bytes."""

    def __init__(self, tower: nn.Module, *, max_images: int = 1_000_000) -> None:
        self.tower = tower
        self.max_images = max_images
        self.entries: dict[bytes, tuple[Tensor, Tensor | None]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.entries)

    def _check_frozen(self) -> None:
        trainable = [name for name, parameter in self.tower.named_parameters() if parameter.requires_grad]
        if trainable:
            raise ValueError(f"VisionFeatureCache: the vision tower is not frozen ({len(trainable)} parameters require "
                             f"gradients, e.g. {trainable[0]!r}); cached features would go stale")

    @staticmethod
    def digest(pixels: Tensor) -> bytes:
        """Digest of one sample's pixels (shape, dtype and bytes)."""
        array = pixels.detach().to("cpu").contiguous()
        header = f"{tuple(array.shape)}{array.dtype}".encode()
        return hashlib.blake2b(header + array.view(torch.uint8).numpy().tobytes(), digest_size=16).digest()

    def lookup(self, pixels: Tensor, encode: Encoder) -> tuple[Tensor, Tensor | None]:
        """Features of ``pixels [B, 3, S, S]``: cached rows as they are, the others from ``encode`` (one call)."""
        self._check_frozen()
        keys = [self.digest(sample) for sample in pixels]
        missing = [index for index, key in enumerate(keys) if key not in self.entries]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh: dict[bytes, tuple[Tensor, Tensor | None]] = {}
        if missing:
            with torch.no_grad():
                global_features, stacks = encode(pixels[missing])
            for row, index in enumerate(missing):
                fresh[keys[index]] = (global_features[row], None if stacks is None else stacks[row])
            if len(self.entries) + len(fresh) <= self.max_images:
                self.entries.update(fresh)
        rows = [self.entries.get(key) or fresh[key] for key in keys]
        global_features = torch.stack([row[0] for row in rows])
        stacks = None if rows[0][1] is None else torch.stack([row[1] for row in rows])
        return global_features, stacks

    def save(self, path: str | os.PathLike) -> Path:
        """Write every entry to the safetensors file ``path`` (atomically: a temporary file, then a rename)."""
        from safetensors.torch import save_file  # noqa: PLC0415

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for key, (global_features, stacks) in self.entries.items():
            tensors[f"{key.hex()}.global"] = global_features.detach().to("cpu").contiguous()
            if stacks is not None:
                tensors[f"{key.hex()}.stacks"] = stacks.detach().to("cpu").contiguous()
        staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file(tensors, str(staging))
        os.replace(staging, path)
        return path

    def load(self, path: str | os.PathLike, device: torch.device | str = "cpu") -> int:
        """Add the entries of a file written by ``save``; returns how many. On the CPU the entries are views of one
        private memory map of the file (``map_safetensors``), so runs sharing a store share its pages instead of each
        holding a copy. Raises ValueError naming the file and key for a tensor whose name is not
        ``<32 hex digits>.global`` / ``.stacks``."""
        if torch.device(device).type == "cpu":
            tensors = map_safetensors(path)
        else:
            from safetensors.torch import load_file  # noqa: PLC0415

            tensors = load_file(str(path), device=str(device))
        loaded: dict[bytes, dict[str, Tensor]] = {}
        for name, tensor in tensors.items():
            digest, _, part = name.partition(".")
            if part not in ("global", "stacks") or len(digest) != 32:
                raise ValueError(f"{path}: tensor {name!r} is not '<32 hex digits>.global' or '.stacks'")
            loaded.setdefault(bytes.fromhex(digest), {})[part] = tensor
        for key, parts in loaded.items():
            if "global" not in parts:
                raise ValueError(f"{path}: entry {key.hex()} has stacks but no global features")
            self.entries[key] = (parts["global"], parts.get("stacks"))
        return len(loaded)


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}


def map_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a safetensors file as CPU views of one copy-on-write memory map of it (pages are read on
    first use and shared with every process mapping the same file). Raises ValueError naming the file for a header
    that is not safetensors' or a dtype this reader does not know."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        header_length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < header_length <= size - 8:
            raise ValueError(f"{path}: not a safetensors file (header length {header_length}, file size {size})")
        try:
            header = json.loads(handle.read(header_length))
        except ValueError as error:
            raise ValueError(f"{path}: unreadable safetensors header ({error})") from None
    mapped = torch.from_file(str(path), shared=False, size=size, dtype=torch.uint8)
    data_start = 8 + header_length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(entry.get("dtype"))
        begin, end = (data_start + offset for offset in entry["data_offsets"])
        if dtype is None or not data_start <= begin <= end <= size:
            raise ValueError(f"{path}: tensor {name!r} has dtype {entry.get('dtype')!r} and byte range "
                             f"{entry['data_offsets']}; expected one of {sorted(SAFETENSORS_DTYPES)} inside the file")
        raw = mapped[begin:end]
        if begin % dtype.itemsize:
            raw = raw.clone()  # unaligned for its dtype: copy these bytes
        tensors[name] = raw.view(dtype).view(entry["shape"])
    return tensors
