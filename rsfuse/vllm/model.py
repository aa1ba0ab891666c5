"""``MFRSVLMForConditionalGeneration``: MF-RSVLM as a vLLM model.

The vision side is rsfuse's own modules, under rsfuse's own state-dict names: ``vision_tower`` (`CLIPVisionTower`),
the canvas (`MultiScaleCanvas`, not registered: its only weights are the tower's), ``sampler``
(`DetailStackSampler`), ``projector`` and ``injectors`` (`GatedInjector` + `Router` per injection layer), built by
``MFRSVLM.new_part`` and run by `rsfuse.model.vision.vision_features`, so the features are MFRSVLM's. The decoder is
vLLM's Llama (``language_model``: paged attention, tensor parallel, its kernels).

How the detail reaches the decoder. vLLM runs an image's encoder once (``embed_multimodal``) and hands the
embeddings of the tokens scheduled in a step to ``embed_input_ids``. Each visual token's embedding here is its
projected global token followed by its ``K`` projected detail-stack entries (``[N, (1 + K) · D]``):
``embed_input_ids`` scatters the global part into the input embeddings and keeps the stacks and the step's flat
indices of each image's span (`PendingInjection`) for the ``forward`` that follows, which runs each injector on
those spans just before its layer, as ``LlamaForCausalLM(..., injection=...)`` does in rsfuse. Only prefill steps
carry image tokens, so decoding steps never inject; they attend to the injected keys/values in the KV cache.
The router pools over an image's whole span, so a step must hold whole spans: the plugin's engine settings
(`rsfuse.vllm.config.EngineSettings`) make vLLM's scheduler never split an image and turn the prefix cache off, and
``embed_input_ids`` refuses, in one line, a step that holds part of a span.

Weights come through rsfuse's readers (`rsfuse.checkpoints.formats`): rsfuse folders, the released MF-RSVLM layout
and llava-hf folders, shard by shard where the format allows.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from einops import rearrange
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import SupportsMultiModal
from vllm.model_executor.models.utils import init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from rsfuse.checkpoints.formats import checkpoint_format
from rsfuse.encoders.clip import CLIPVisionTower
from rsfuse.fusion.sampler import DetailStackSampler
from rsfuse.model.mfrsvlm import MFRSVLM
from rsfuse.model.vision import build_canvas, vision_features
from rsfuse.vllm.config import VllmPluginError, check_head_size, model_folder, placeholder_id, rsfuse_config
from rsfuse.vllm.processing import (
    MFRSVLMDummyInputsBuilder,
    MFRSVLMMultiModalProcessor,
    MFRSVLMProcessingInfo,
    pixel_values_of,
)

__all__ = ["MFRSVLMForConditionalGeneration", "PendingInjection"]


@dataclass
class PendingInjection:
    """One step's visual spans: ``index [M, N]`` flat token indices of the ``M`` images' slots in the step and their
    projected ``stacks [M, K, N, D]``."""

    index: torch.Tensor
    stacks: torch.Tensor


@MULTIMODAL_REGISTRY.register_processor(
    MFRSVLMMultiModalProcessor, info=MFRSVLMProcessingInfo, dummy_inputs=MFRSVLMDummyInputsBuilder
)
class MFRSVLMForConditionalGeneration(nn.Module, SupportsMultiModal):
    """MF-RSVLM on vLLM (see the module docstring)."""

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return "<image>"
        raise ValueError(f"MF-RSVLM takes images, not {modality!r}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        self.folder = model_folder(vllm_config.model_config)
        self.rsfuse_config = config = rsfuse_config(vllm_config.model_config)
        check_head_size(config, str(self.folder))
        text_config = vllm_config.model_config.hf_config.get_text_config()
        self.configure_mm_token_handling(vocab_size=text_config.vocab_size, mm_token_ids=[placeholder_id(config)])
        with self._mark_tower_model(vllm_config, "image"):
            self.vision_tower = CLIPVisionTower(config.vision, attention_backend=config.attention_backend)
            self.projector = MFRSVLM.new_part(config, "projector")
        self.injectors = MFRSVLM.new_part(config, "injectors")
        self.sampler = DetailStackSampler(config.stack_factor)
        object.__setattr__(self, "canvas", build_canvas(config, self.vision_tower))
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=text_config, architectures=["LlamaForCausalLM"],
                prefix=maybe_prefix(prefix, "language_model"),
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors
        self.pending: PendingInjection | None = None

    # ----- vision ------------------------------------------------------------------------------------------------
    def embed_multimodal(self, **kwargs: object) -> list[torch.Tensor]:
        """Per image ``[N, (1 + K) · D]``: the projected global token and, with detail, its ``K`` stack entries."""
        pixels = pixel_values_of(kwargs)
        if pixels is None:
            return []
        pixels = pixels.to(device=self.projector[0].weight.device, dtype=self.projector[0].weight.dtype)
        features, stacks = vision_features(self.rsfuse_config, self.vision_tower, self.canvas, self.sampler, pixels)
        tokens = self.projector(features)
        if stacks is not None:
            tokens = torch.cat([tokens, rearrange(self.projector(stacks), "b k n d -> b n (k d)")], dim=-1)
        return list(tokens.unbind(0))

    def embed_input_ids(self, input_ids: torch.Tensor, multimodal_embeddings: Any = None, *,
                        is_multimodal: torch.Tensor | None = None) -> torch.Tensor:
        """Text embeddings with each image's global tokens in its slots; the stacks wait for ``forward``. vLLM embeds
        every step of a multimodal model here, so what an earlier step left is dropped first."""
        self.pending = None
        embeds = self._embed_text_input_ids(input_ids, self.language_model.embed_input_ids,
                                            is_multimodal=is_multimodal)
        if multimodal_embeddings is None or len(multimodal_embeddings) == 0:
            return embeds
        tokens, width = self.rsfuse_config.num_visual_tokens, embeds.shape[-1]
        short = [item.shape[0] for item in multimodal_embeddings if item.shape[0] != tokens]
        if short:
            raise VllmPluginError(f"{self.folder}: a step holds {short[0]} of an image's {tokens} visual tokens (a "
                                  "prefill chunk split a visual span; the plugin needs disable_chunked_mm_input and "
                                  "no prefix caching, which its engine settings set)")
        items = torch.stack(list(multimodal_embeddings)).to(embeds.dtype)
        index = rearrange(is_multimodal.to(embeds.device).nonzero().flatten(), "(m n) -> m n", n=tokens)
        embeds = embeds.index_put((index.flatten(),), items[..., :width].flatten(0, 1))
        if items.shape[-1] > width:
            stacks = rearrange(items[..., width:], "m n (k d) -> m k n d", d=width)
            self.pending = PendingInjection(index=index, stacks=stacks)
        return embeds

    # ----- decoder -----------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None, inputs_embeds: torch.Tensor | None = None,
                **kwargs: object) -> torch.Tensor:
        """vLLM's Llama layers, each injector run on the step's visual spans just before its layer."""
        pending, self.pending = self.pending, None
        model = self.language_model.model
        hidden = model.embed_input_ids(input_ids) if inputs_embeds is None else inputs_embeds
        residual = None
        for layer_index, layer in enumerate(islice(model.layers, model.start_layer, model.end_layer),
                                            start=model.start_layer):
            injector = self.injectors[str(layer_index)] if str(layer_index) in self.injectors else None
            if pending is not None and injector is not None:
                full = hidden if residual is None else hidden + residual
                flat = pending.index.flatten()
                injected = injector(full[pending.index], pending.stacks.to(full.dtype))
                hidden, residual = full.index_put((flat,), injected.flatten(0, 1)), None
            hidden, residual = layer(positions, hidden, residual)
        hidden, _ = model.norm(hidden, residual)
        return hidden

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def get_language_model(self) -> nn.Module:
        return self.language_model

    # ----- weights -----------------------------------------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Read the folder with rsfuse's readers (vLLM's own iterator over its files is not used) and assign every
        weight: rsfuse names for the vision side and injectors, vLLM's Llama loader (fused q/k/v and gate/up) for the
        decoder. Returns the names loaded; a missing weight is one line naming it."""
        own = dict(self.named_parameters())
        loaded: set[str] = set()
        decoder: list[tuple[str, torch.Tensor]] = []
        for name, tensor in _rsfuse_state(self.folder):
            if name.startswith("llm."):
                decoder.append((name[len("llm."):], tensor))
            elif name in own:
                default_weight_loader(own[name], tensor)
                loaded.add(name)
            if len(decoder) >= 64:
                loaded |= {f"language_model.{key}" for key in self.language_model.load_weights(decoder)}
                decoder = []
        loaded |= {f"language_model.{key}" for key in self.language_model.load_weights(decoder)}
        missing = sorted(name for name in own if name not in loaded)
        if missing:
            raise VllmPluginError(f"{self.folder}: no weight for {missing[0]} (and {len(missing) - 1} more) in the "
                                  "folder as rsfuse reads it")
        return loaded


def _rsfuse_state(folder: Any) -> Iterable[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of the folder in ``MFRSVLM``'s state-dict names: shard by shard for the rsfuse and released
    layouts; a llava-hf folder (LLaVA parts) is assembled by ``MFRSVLM.from_pretrained`` first."""
    checkpoint = checkpoint_format(folder)
    if checkpoint.reads_parts:
        yield from MFRSVLM.from_pretrained(folder).state_dict().items()
        return
    _, shards = checkpoint.read_shards(folder)
    for _, shard in shards:
        yield from shard.items()
