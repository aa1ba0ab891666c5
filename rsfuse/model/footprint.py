"""What a model costs on the device, per part: parameters and bytes, computed on the meta device from the config
alone (no weight read), for full precision and each quantization scheme; and the bytes a loaded model really holds
(`measured_bytes`), which the computed figures are tested against.

Bytes of a quantized decoder linear ``[out, in]`` (the layouts `rsfuse.model.quantization` produces):

* ``int8`` (torchao ``Int8Tensor``): int8 values ``out·in`` + per-row float32 scale and int8 zero point ``5·out``;
* ``nf4`` (bitsandbytes ``Params4bit``, blocksize 64, double quantization): packed 4-bit ``out·in/2`` + one uint8
  absmax per block ``⌈out·in/64⌉`` + a float32 absmax per 256 blocks + the code tables (16 + 256 float32) and the
  float32 offset;
* ``int4`` (torchao ``Int4Tensor``, group 128): packed 4-bit ``out·in/2`` + bf16 scale and zero point per group.

Biases and everything outside the decoder's linears stay in the load dtype.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from rsfuse.model.mfrsvlm import MFRSVLM
from rsfuse.model.quantization import INT4_GROUP_SIZE, NF4_BLOCKSIZE, decoder_linear_names

__all__ = ["PartFootprint", "PARTS", "part_name", "footprint", "measured_bytes", "quantized_linear_bytes"]

PARTS = ("vision_tower", "projector", "injectors", "embed_tokens", "decoder_layers", "norm", "lm_head")


@dataclass(frozen=True)
class PartFootprint:
    part: str
    parameters: int
    full_bytes: int  # in the load dtype
    device_bytes: int  # with the scheme applied (== full_bytes for parts a scheme leaves alone)


def part_name(key: str) -> str:
    """The part a state-dict key belongs to (`PARTS`)."""
    for prefix, part in (("vision_tower.", "vision_tower"), ("projector.", "projector"), ("injectors.", "injectors"),
                         ("llm.model.embed_tokens.", "embed_tokens"), ("llm.model.layers.", "decoder_layers"),
                         ("llm.model.norm.", "norm"), ("llm.lm_head.", "lm_head")):
        if key.startswith(prefix):
            return part
    raise ValueError(f"{key!r} belongs to no part of {PARTS}")


def quantized_linear_bytes(out_features: int, in_features: int, scheme: str) -> int:
    """Device bytes of one ``[out, in]`` weight in ``scheme`` (see the module docstring)."""
    count = out_features * in_features
    if scheme == "int8":
        return count + 5 * out_features
    if scheme == "nf4":
        blocks = math.ceil(count / NF4_BLOCKSIZE)
        return math.ceil(count / 2) + blocks + 4 * math.ceil(blocks / 256) + 4 * (16 + 256) + 4
    if scheme == "int4":
        return math.ceil(count / 2) + 2 * 2 * math.ceil(count / INT4_GROUP_SIZE)
    raise ValueError(f"quantization scheme {scheme!r} has no byte count")


def footprint(config, *, scheme: str | None, dtype: torch.dtype) -> list[PartFootprint]:
    """Per part: parameters, bytes in ``dtype``, bytes with ``scheme``; the model is built on the meta device."""
    with torch.device("meta"):
        model = MFRSVLM(config)
    model.llm.tie_weights()
    quantized = {name + ".weight": model.get_submodule(name).weight.shape for name in decoder_linear_names(model)}
    width = torch.empty(0, dtype=dtype).element_size()
    totals: dict[str, list[int]] = {part: [0, 0, 0] for part in PARTS}
    seen: set[int] = set()
    for key, tensor in model.named_parameters(remove_duplicate=False):
        if id(tensor) in seen:  # a tied lm_head is the embedding
            continue
        seen.add(id(tensor))
        entry = totals[part_name(key)]
        entry[0] += tensor.numel()
        entry[1] += tensor.numel() * width
        quantize = scheme is not None and key in quantized
        entry[2] += quantized_linear_bytes(*quantized[key], scheme) if quantize else tensor.numel() * width
    return [PartFootprint(part, *values) for part, values in totals.items() if values[0]]


def _tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes behind ``tensor``: a torchao tensor subclass by its inner tensors, a bitsandbytes 4-bit weight with its
    quantization state, a plain tensor by its elements."""
    if hasattr(tensor, "__tensor_flatten__") and type(tensor) not in (torch.Tensor, nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(tensor, name)) for name in names)
    size = tensor.numel() * tensor.element_size()
    state = getattr(tensor, "quant_state", None)
    if state is not None:
        size += sum(part.numel() * part.element_size() for part in (state.absmax, state.code))
        size += state.offset.numel() * state.offset.element_size() if state.offset is not None else 0
        if state.state2 is not None:
            size += sum(part.numel() * part.element_size() for part in (state.state2.absmax, state.state2.code))
    return size


def measured_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes each part of a loaded ``MFRSVLM`` holds in its parameters (shared tensors counted once)."""
    totals = {part: 0 for part in PARTS}
    for key, tensor in model.named_parameters():
        totals[part_name(key)] += _tensor_bytes(tensor)
    return {part: size for part, size in totals.items() if size}
