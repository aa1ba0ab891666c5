"""Low-memory weights: the decoder's linear layers quantized weight-only, at load time, one shard at a time.

=========  =================================================================  ====================================
scheme     what replaces each decoder ``nn.Linear`` weight                     runs on
=========  =================================================================  ====================================
``int8``   torchao ``Int8WeightOnlyConfig`` (int8 per output row + a scale)    CPU and CUDA
``nf4``    bitsandbytes ``Linear4bit``: NF4, double quantization, blocksize 64  CUDA; bitsandbytes' CPU backend
``int4``   torchao ``Int4WeightOnlyConfig`` (group size 128)                   where torchao's int4 kernels run
                                                                               (CUDA SM80+); else refused naming nf4
=========  =================================================================  ====================================

Only ``llm.model.layers.*`` linears (q/k/v/o, gate/up/down) are quantized: the vision tower, projector, routers,
injectors, embeddings and ``lm_head`` keep the load dtype. `check_quantization` refuses, in one line each, an unknown
scheme, a scheme the device cannot run and a missing package (``pip install rsfuse[quant]``), before any weight is
read. `StreamingQuantizer` is called by the loader after each checkpoint shard is assigned: every decoder linear whose
weights are all loaded is quantized then, so the full-precision copy of a layer lives only until its shard is done.
"""

import logging
import re
from typing import Any

import torch
from torch import nn

from rsfuse.options import QUANTIZATIONS, check_option

__all__ = [
    "QuantizationError",
    "QUANT_EXTRA",
    "NF4_BLOCKSIZE",
    "INT4_GROUP_SIZE",
    "check_quantization",
    "decoder_linear_names",
    "StreamingQuantizer",
    "refuse_prequantized",
    "QUANTIZED_KEY",
    "frozen_quantized_keys",
    "quantize_model",
]

QUANT_EXTRA = "pip install rsfuse[quant]"
NF4_BLOCKSIZE = 64
INT4_GROUP_SIZE = 128
NF4_CHUNK = 1 << 20
"""Weight elements per bitsandbytes NF4 call on the CPU (`_nf4_linear`); a multiple of ``NF4_BLOCKSIZE``."""
QUANTIZED_KEY = re.compile(
    r"^llm\.model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)(\.base_layer)?\.weight(\..+)?$"
)
"""State-dict keys of a quantized linear's weight (and its quantization state), also under a LoRA wrapper."""
DECODER_LINEAR = re.compile(r"^llm\.model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)$")
_PACKAGES = {"int8": "torchao", "int4": "torchao", "nf4": "bitsandbytes"}


class QuantizationError(ValueError):
    """A quantization scheme that cannot be used as asked; the message says why and what to do instead."""


_IMPORT_NOISE = ("torch.utils._pytree", "bitsandbytes", "torchao")
"""Loggers that warn while the packages import (a deprecation in torch's pytree registry, bitsandbytes' optional CPU
kernel download): quiet then, so a refusal stays one line."""


def _import(scheme: str):
    package = _PACKAGES[scheme]
    loggers = [logging.getLogger(name) for name in _IMPORT_NOISE]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        if package == "torchao":
            import torchao.quantization as module  # noqa: PLC0415
        else:
            import bitsandbytes as module  # noqa: PLC0415
    except ImportError:
        raise QuantizationError(f"quantization={scheme!r} needs the {package} package: {QUANT_EXTRA}") from None
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    return module


def check_quantization(scheme: str | None, device: torch.device | str) -> None:
    """Refuse ``scheme`` on ``device`` in one line (unknown, not runnable there, package missing); None passes."""
    if scheme is None:
        return
    try:
        check_option(scheme, QUANTIZATIONS, "quantization")
    except ValueError as error:
        raise QuantizationError(str(error)) from None
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise QuantizationError(f"quantization={scheme!r} runs on cpu or cuda devices, not {device.type}")
    _import(scheme)
    if scheme == "int4":
        reason = _int4_unavailable(device)
        if reason:
            raise QuantizationError(
                f"quantization='int4': torchao's int4 weight-only kernels do not run here ({reason}); use "
                "quantization='nf4' (bitsandbytes NF4, about the same size)"
            )


def _int4_unavailable(device: torch.device) -> str:
    """Why torchao int4 cannot run on ``device`` ('' when it can): a real tiny layer is quantized and run."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device"
        major, _ = torch.cuda.get_device_capability(device)
        if major < 8:
            return f"compute capability {major}.x, SM80+ needed"
    from torchao.quantization import Int4WeightOnlyConfig, quantize_  # noqa: PLC0415

    probe = nn.Sequential(nn.Linear(INT4_GROUP_SIZE, 8, bias=False, dtype=torch.bfloat16, device=device))
    try:
        quantize_(probe, Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE))
        probe(torch.zeros(1, INT4_GROUP_SIZE, dtype=torch.bfloat16, device=device))
    except Exception as error:  # noqa: BLE001  (any failure means: not on this device)
        return f"{device.type}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".strip()
    return ""


def refuse_prequantized(config_json: dict[str, Any], source: str, scheme: str | None) -> None:
    """A checkpoint that is already quantized (``quantization_config`` in its ``config.json``) is refused: rsfuse
    reads full-precision weights and quantizes them at load."""
    stored = config_json.get("quantization_config")
    if stored is None:
        return
    method = stored.get("quant_method", "?") if isinstance(stored, dict) else "?"
    if scheme is not None:
        raise QuantizationError(
            f"{source}: the checkpoint is already quantized ({method}); it cannot be quantized again with "
            f"quantization={scheme!r}: load its full-precision original with quantization={scheme!r}"
        )
    raise QuantizationError(
        f"{source}: the checkpoint is already quantized ({method}); rsfuse reads full-precision weights: load the "
        "full-precision original, with quantization='int8' | 'nf4' for fewer bytes"
    )


def decoder_linear_names(model: nn.Module) -> list[str]:
    """The ``nn.Linear`` modules a scheme quantizes (decoder layers' attention and MLP projections)."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and DECODER_LINEAR.match(name)]


def _quantize_one(model: nn.Module, name: str, scheme: str, compute_dtype: torch.dtype) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    linear = getattr(parent, child)
    if scheme == "nf4":
        setattr(parent, child, _nf4_linear(linear, compute_dtype))
        return
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_  # noqa: PLC0415

    config = Int8WeightOnlyConfig() if scheme == "int8" else Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE)
    quantize_(parent, config, filter_fn=lambda module, fqn: module is linear)


def _nf4_linear(linear: nn.Linear, compute_dtype: torch.dtype, *, chunk: int = NF4_CHUNK) -> nn.Module:
    """``linear`` as a bitsandbytes ``Linear4bit`` (NF4, double quantization, blocksize 64).

    On CUDA, bitsandbytes quantizes as the weight reaches the device (``Params4bit.to``). On the CPU its kernel makes
    float32 temporaries of about 12 bytes per weight element (~0.6 GB for a 7B MLP weight, on top of the load's peak),
    so the weight is quantized ``chunk`` elements at a time (whole blocks: NF4 blocks are independent, the bytes are
    the same as one call's; the test compares them) and its block scales double-quantized as
    ``bitsandbytes.functional.quantize_4bit`` does.
    """
    import bitsandbytes as bnb  # noqa: PLC0415

    weight = linear.weight.data
    quantized = bnb.nn.Linear4bit(
        linear.in_features, linear.out_features, bias=linear.bias is not None, compute_dtype=compute_dtype,
        compress_statistics=True, quant_type="nf4", device="meta",
    )
    if linear.bias is not None:
        quantized.bias = nn.Parameter(linear.bias.data, requires_grad=False)
    if linear.in_features % NF4_BLOCKSIZE:  # bitsandbytes' packed AVX512-BF16 CPU path needs whole blocks per row
        quantized.support_avx512bf16_for_cpu = False
    if weight.device.type != "cpu":
        quantized.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=True, quant_type="nf4",
                                             blocksize=NF4_BLOCKSIZE, module=quantized)
        return quantized.to(weight.device)
    functional = bnb.functional
    flat = weight.reshape(-1)
    packed = torch.empty(((flat.numel() + 1) // 2, 1), dtype=torch.uint8)
    absmax = torch.empty(-(-flat.numel() // NF4_BLOCKSIZE), dtype=torch.float32)
    for start in range(0, flat.numel(), chunk):
        piece_packed, piece_state = functional.quantize_4bit(flat[start : start + chunk], blocksize=NF4_BLOCKSIZE,
                                                             quant_type="nf4")
        packed[start // 2 : start // 2 + piece_packed.shape[0]] = piece_packed
        block = start // NF4_BLOCKSIZE
        absmax[block : block + piece_state.absmax.numel()] = piece_state.absmax
    offset = absmax.mean()
    nested, nested_state = functional.quantize_blockwise(absmax - offset, blocksize=256)
    state = functional.QuantState(
        absmax=nested, shape=weight.shape, dtype=weight.dtype, blocksize=NF4_BLOCKSIZE,
        code=functional.get_4bit_type("nf4", device=weight.device), quant_type="nf4", offset=offset,
        state2=nested_state,
    )
    quantized.weight = bnb.nn.Params4bit(packed, requires_grad=False, quant_state=state, blocksize=NF4_BLOCKSIZE,
                                         compress_statistics=True, quant_type="nf4", module=quantized,
                                         bnb_quantized=True)
    quantized.quant_state = state
    return quantized


class StreamingQuantizer:
    """Quantizes each decoder linear of ``model`` as soon as its weights are loaded (call after every shard);
    `finish` checks that every one was."""

    def __init__(self, model: nn.Module, scheme: str, *, compute_dtype: torch.dtype) -> None:
        self.model, self.scheme, self.compute_dtype = model, scheme, compute_dtype
        self.pending = decoder_linear_names(model)
        self._replaced = {f"{name}.{part}" for name in self.pending for part in ("weight", "bias")}

    def replaces(self, key: str) -> bool:
        """Whether the weight ``key`` is one this quantizer replaces (a decoder linear's weight or bias)."""
        return key in self._replaced

    def __call__(self) -> None:
        still = []
        for name in self.pending:
            linear = self.model.get_submodule(name)
            if any(parameter.is_meta for parameter in linear.parameters()):
                still.append(name)
            else:
                _quantize_one(self.model, name, self.scheme, self.compute_dtype)
        self.pending = still

    def finish(self) -> None:
        self()
        if self.pending:
            raise QuantizationError(
                f"quantization={self.scheme!r}: these linears were never loaded: {self.pending[:5]}"
            )
        self.model.quantization = self.scheme


def frozen_quantized_keys(model: nn.Module, keys) -> set[str]:
    """Among ``keys``, those of ``model``'s quantized decoder weights (empty for a full-precision model): frozen,
    re-derived from the source checkpoint, so training step files leave them out."""
    if not getattr(model, "quantization", None) and not getattr(getattr(model, "module", None), "quantization", None):
        return set()
    return {key for key in keys if QUANTIZED_KEY.match(key)}


def quantize_model(model: nn.Module, scheme: str) -> nn.Module:
    """Quantize a loaded (or built) model's decoder linears in place, as ``from_pretrained(..., quantization=)`` does
    at load; a model already quantized is refused."""
    if getattr(model, "quantization", None):
        raise QuantizationError(f"the model is already quantized ({model.quantization}); quantize a full-precision one")
    parameter = next(model.parameters())
    check_quantization(scheme, parameter.device)
    quantizer = StreamingQuantizer(model, scheme, compute_dtype=parameter.dtype)
    quantizer.finish()
    return model
