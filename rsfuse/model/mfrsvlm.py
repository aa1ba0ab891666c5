"""``MFRSVLM``: the composed model (docs/DESIGN_NOTES.md §1): CLIP tower, multi-scale canvas, detail stacks, one shared projector,
Llama decoder with gated injectors run before the configured layers.

The decoder receives the prefill's visual context explicitly (``LlamaForCausalLM(..., injection=...)``: projected
stacks, visual positions, which samples have an image) and runs each injector just before its layer; decoding steps
pass nothing and attend to the injected visual keys/values in the cache. No hooks on our own modules (``graft`` is
the adapter for decoders we do not own). The sequence layout is ``rsfuse.model.layout`` (shared with the processor).

Module tree and state-dict keys (the rsfuse folder format):

* ``vision_tower.*``  — ``CLIPVisionTower`` (HF keys without ``vision_model.``). The canvas uses the same tower
  object but is *not* registered as a submodule, so the tower's weights appear once in ``state_dict``;
* ``projector.{0,2}.*`` — the ``mlp2x_gelu`` projector shared by the global tokens and every detail stack;
* ``llm.*`` — ``LlamaForCausalLM`` with HF keys (``llm.model.layers.3.self_attn.q_proj.weight``, ``llm.lm_head.weight``);
* ``injectors.{i}.*`` — one ``GatedInjector`` with a ``Router`` per injection layer, ``i`` the 0-based decoder index.

Logits cover the whole laid-out sequence, visual positions included (``[B, N + L, V]`` in prefix mode); the
output also carries the assembled ``attention_mask``, ``position_ids`` and ``labels`` (−100 at visual, padding and
unlabelled positions), so every logit row can be aligned with its target. The loss ignores visual positions.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from einops import repeat
from torch import nn

from rsfuse._typing import Bool, Float, Int, Tensor, typecheck
from rsfuse.encoders.clip import CLIPVisionTower
from rsfuse.fusion.projector import MLPProjector
from rsfuse.fusion.sampler import DetailStackSampler
from rsfuse.generation import CompiledSessions
from rsfuse.injection.gated import GatedInjector
from rsfuse.injection.router import Router
from rsfuse.injection.visual import DecoderInjection, InjectionStats, VisualContext
from rsfuse.llm.model import LlamaForCausalLM, causal_lm_loss
from rsfuse.model.config import MFRSVLMConfig
from rsfuse.model.feature_cache import VisionFeatureCache
from rsfuse.model.generative import GenerativeMixin
from rsfuse.model.layout import SequenceLayout
from rsfuse.model.sequence import boundary_layout, check_token_ids, given_layout
from rsfuse.model.vision import WINDOWS_PER_TOWER_CALL, build_canvas, vision_features  # noqa: F401  (re-exported)

__all__ = ["MFRSVLM", "MFRSVLMOutput"]


@dataclass
class MFRSVLMOutput:
    """``logits [B, T, V]`` over the assembled sequence (visual positions included), ``loss`` (None without labels)."""

    loss: Tensor | None
    logits: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    labels: Tensor | None
    visual_positions: Tensor | None = None
    """``[B, N]`` sequence indices of the visual tokens (None for a text-only batch)."""
    injection_stats: dict[int, InjectionStats] | None = None
    """With ``output_injection_stats=True``: per 0-based injection layer, gate mean ``[B, N]`` and router weights."""
    attentions: list[Tensor] | None = None
    """With ``output_attentions=True``: per decoder layer, softmax weights ``[B, H, T, T]`` (float32)."""


class MFRSVLM(GenerativeMixin, nn.Module):
    """MF-RSVLM. ``forward(pixel_values, input_ids, attention_mask=None, labels=None, *, image_mask=None)``.

    ``pixel_values``: ``[B, 3, S, S]`` normalised pixels with ``S = config.input_size`` (the global view, or the canvas
    when ``canvas_source="image"``), or None for an all-text batch. ``image_mask [B]`` marks samples that carry an
    image (rows of ``pixel_values`` for the others are ignored and not encoded).
    """

    def __init__(self, config: MFRSVLMConfig) -> None:
        super().__init__()
        if not isinstance(config, MFRSVLMConfig):
            raise TypeError(f"MFRSVLM expects an MFRSVLMConfig, got {type(config).__name__}")
        self.config = config
        backend = config.attention_backend
        self.vision_tower = CLIPVisionTower(config.vision, attention_backend=backend)
        self.projector = self.new_part(config, "projector")
        self.llm = LlamaForCausalLM(config.llm, attention_backend=backend)
        self.sampler = DetailStackSampler(config.stack_factor)
        self.injectors = self.new_part(config, "injectors")
        canvas = build_canvas(config, self.vision_tower)
        # Not registered: the canvas's only weights are the tower's, already registered as ``vision_tower``.
        object.__setattr__(self, "canvas", canvas)
        self.tokenizer_path: Path | None = None
        self.chat_template: str | None = None  # the conversation template a loaded folder records
        self.source: Any = None  # rsfuse.checkpoints.hub.ModelSource of a from_pretrained load (folder / Hub id)
        self.quantization: str | None = None  # the scheme the decoder's linears were loaded in (None: full precision)
        object.__setattr__(self, "vision_feature_cache", None)
        self.compiled_sessions = CompiledSessions()
        """The sessions ``generate(compile=True)`` reuses (their caches and compiled graphs); ``.clear()`` drops them."""

    @staticmethod
    def new_part(config: MFRSVLMConfig, name: str) -> nn.Module:
        """A newly initialised ``"projector"`` or ``"injectors"`` (what ``from_parts`` starts at random)."""
        if name == "projector":
            return MLPProjector(config.vision.hidden_size, config.llm.hidden_size)
        if name != "injectors":
            raise ValueError(f"new_part: 'projector' or 'injectors', got {name!r}")
        dim = config.llm.hidden_size
        return nn.ModuleDict(
            {
                str(index): GatedInjector(
                    dim,
                    router=Router(dim, mode=config.router_mode, attention_backend=config.attention_backend),
                    residual_scale_init=config.residual_scale_init,
                )
                for index in config.injection_layer_indices
            }
        )

    # ----- properties ----------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.projector[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.projector[0].weight.dtype

    @property
    def num_visual_tokens(self) -> int:
        return self.config.num_visual_tokens

    def gradient_checkpointing_enable(self, *, vision: bool = True, llm: bool = True) -> None:
        """Recompute tower blocks and/or decoder layers in backward (the injectors run outside the recomputed part)."""
        self.vision_tower.gradient_checkpointing = vision
        self.llm.gradient_checkpointing = llm

    def gradient_checkpointing_disable(self) -> None:
        self.gradient_checkpointing_enable(vision=False, llm=False)

    # ----- vision --------------------------------------------------------------------------------------------------
    def _check_pixels(self, pixel_values: Tensor) -> None:
        size = self.config.input_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (self.config.vision.num_channels, size, size):
            where = "the canvas size (canvas_source='image')" if self.config.canvas_source == "image" else "the global view"
            raise ValueError(
                f"MFRSVLM: pixel_values must be [B, {self.config.vision.num_channels}, {size}, {size}] ({where}), "
                f"got {tuple(pixel_values.shape)}"
            )

    @typecheck
    def encode_images(
        self, pixel_values: Float[Tensor, "batch channels height width"]
    ) -> tuple[Float[Tensor, "batch tokens dim"], Float[Tensor, "batch stacks tokens dim"] | None]:
        """Projected global tokens ``[B, N, D]`` and projected detail stacks ``[B, K, N, D]`` (None without detail).

        The stacks are computed once per image (1 + Σ windows tower passes) and shared by every injection layer.
        """
        self._check_pixels(pixel_values)
        pixels = pixel_values.to(self.dtype)
        cache = self.vision_feature_cache
        features, detail = (self.vision_features(pixels) if cache is None
                            else cache.lookup(pixels, self.vision_features))
        return self.projector(features), None if detail is None else self.projector(detail)

    def vision_features(
        self, pixels: Float[Tensor, "batch channels height width"]
    ) -> tuple[Float[Tensor, "batch tokens vision_dim"], Float[Tensor, "batch stacks tokens vision_dim"] | None]:
        """The tower's part of ``encode_images``: global features ``[B, N, C]`` and detail stacks ``[B, K, N, C]``
        (None without detail), before the projector."""
        return vision_features(self.config, self.vision_tower, self.canvas, self.sampler, pixels)

    def enable_vision_feature_cache(self) -> VisionFeatureCache:
        """Reuse the frozen tower's features of images seen before (see ``VisionFeatureCache``); returns the cache.
        Raises at the next encoding if a tower parameter requires a gradient."""
        cache = VisionFeatureCache(self.vision_tower)
        object.__setattr__(self, "vision_feature_cache", cache)
        return cache

    def _encode_selected(
        self, pixel_values: Tensor | None, image_mask: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Encode only the samples with an image; rows of text-only samples are zeros (and masked later)."""
        if pixel_values is None:
            if image_mask is not None and bool(image_mask.any()):
                raise ValueError("MFRSVLM: image_mask marks samples with an image but pixel_values is None")
            return None, None, None
        if image_mask is None:
            global_tokens, stacks = self.encode_images(pixel_values)
            return global_tokens, stacks, None
        image_mask = image_mask.to(device=pixel_values.device, dtype=torch.bool)
        if image_mask.shape != (pixel_values.shape[0],):
            raise ValueError(
                f"MFRSVLM: image_mask must be [B] = [{pixel_values.shape[0]}], got {tuple(image_mask.shape)}"
            )
        # One host sync per batch to skip the 59 tower passes of every text-only sample.
        selected = image_mask.nonzero().flatten()
        if selected.numel() == 0:
            return None, None, None
        if selected.numel() == pixel_values.shape[0]:
            global_tokens, stacks = self.encode_images(pixel_values)
            return global_tokens, stacks, image_mask
        global_selected, stacks_selected = self.encode_images(pixel_values.index_select(0, selected))
        batch = pixel_values.shape[0]
        global_tokens = global_selected.new_zeros((batch, *global_selected.shape[1:])).index_copy(0, selected, global_selected)
        stacks = None
        if stacks_selected is not None:
            stacks = stacks_selected.new_zeros((batch, *stacks_selected.shape[1:])).index_copy(0, selected, stacks_selected)
        return global_tokens, stacks, image_mask

    # ----- sequence ------------------------------------------------------------------------------------------------
    @property
    def pad_token_id(self) -> int:
        """The decoder config's pad rule (`rsfuse.llm.LlamaConfig.pad_id`)."""
        return self.config.llm.pad_id

    def layout(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        *,
        image_mask: Tensor | None,
        padding_side: str,
    ) -> SequenceLayout:
        """The explicit layout at the model's boundary for raw ids (`rsfuse.model.sequence.boundary_layout`)."""
        return boundary_layout(self.config, input_ids, attention_mask, labels, image_mask=image_mask,
                               padding_side=padding_side)

    def check_token_ids(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> None:
        """A ValueError naming the first id outside the vocabulary (`rsfuse.model.sequence.check_token_ids`)."""
        check_token_ids(self.config, input_ids, attention_mask)

    def embed(self, layout: SequenceLayout, global_tokens: Tensor | None) -> Tensor:
        """Text embeddings with the projected global tokens ``[B, N, D]`` scattered into the visual slots."""
        ids = layout.input_ids
        is_image = ids == self.config.image_token_index
        embeds = self.llm.get_input_embeddings()(ids.masked_fill(is_image, self.pad_token_id))
        if global_tokens is None or layout.visual_positions is None:
            return embeds
        index = repeat(layout.visual_positions, "b n -> b n d", d=embeds.shape[-1])
        return embeds.scatter(1, index, global_tokens.to(embeds.dtype))

    def injection(
        self, stacks: Tensor | None, layout: SequenceLayout, image_mask: Tensor | None, *, keep_stats: bool = False
    ) -> DecoderInjection | None:
        """The prefill's visual context bound to the injectors (None without detail stacks)."""
        if stacks is None or not self.config.detail or layout.visual_positions is None:
            return None
        tokens = self.config.num_visual_tokens
        prefix = self.config.image_placement == "prefix"
        context = VisualContext(
            stacks=stacks,
            positions=None if prefix else layout.visual_positions,
            visual_slice=slice(0, tokens) if prefix else None,
            sample_mask=image_mask,
        )
        return DecoderInjection(self.injectors, context, keep_stats=keep_stats)

    def prefill_inputs(
        self,
        pixel_values: Tensor | None,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        *,
        image_mask: Tensor | None = None,
        visual_positions: Tensor | None = None,
        padding_side: str = "right",
        keep_stats: bool = False,
    ) -> tuple[SequenceLayout, Tensor, DecoderInjection | None]:
        """Encode the images, take the processor's layout (``visual_positions`` given) or lay out raw ids
        (``padding_side``), and embed: ``(layout, inputs_embeds, injection or None)``."""
        if pixel_values is not None and pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"MFRSVLM: pixel_values has {pixel_values.shape[0]} samples but input_ids has {input_ids.shape[0]}"
            )
        if visual_positions is not None and pixel_values is None:
            raise ValueError("MFRSVLM: visual_positions given without pixel_values")
        global_tokens, stacks, image_mask = self._encode_selected(pixel_values, image_mask)
        if visual_positions is not None:
            layout = given_layout(self.config, input_ids, attention_mask, labels, visual_positions)
        else:
            if global_tokens is not None and image_mask is None:
                image_mask = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            layout = self.layout(
                input_ids, attention_mask, labels,
                image_mask=None if global_tokens is None else image_mask, padding_side=padding_side,
            )
        embeds = self.embed(layout, global_tokens)
        return layout, embeds, self.injection(stacks, layout, image_mask, keep_stats=keep_stats)

    # ----- forward -------------------------------------------------------------------------------------------------
    @typecheck
    def forward(
        self,
        pixel_values: Float[Tensor, "batch channels height width"] | None,
        input_ids: Int[Tensor, "batch text"],
        attention_mask: Int[Tensor, "batch text"] | Bool[Tensor, "batch text"] | None = None,
        labels: Int[Tensor, "batch text"] | None = None,
        *,
        image_mask: Bool[Tensor, " batch"] | None = None,
        visual_positions: Int[Tensor, "batch visual"] | None = None,
        output_injection_stats: bool = False,
        output_attentions: bool = False,
    ) -> MFRSVLMOutput:
        """Training / scoring forward (right padding). ``labels`` align with ``input_ids`` (HF style, −100 ignored).

        ``output_injection_stats``: also return each injector's gate mean and router weights (``injection_stats``).
        ``output_attentions``: also return each decoder layer's attention weights ``[B, H, T, T]`` (``attentions``).
        """
        layout, embeds, injection = self.prefill_inputs(
            pixel_values, input_ids, attention_mask, labels, image_mask=image_mask, visual_positions=visual_positions,
            keep_stats=output_injection_stats,
        )
        output = self.llm(
            inputs_embeds=embeds,
            attention_mask=layout.attention_mask,
            position_ids=layout.position_ids,
            injection=injection,
            output_attentions=output_attentions,
        )
        loss = None if layout.labels is None else causal_lm_loss(output.logits, layout.labels)
        return MFRSVLMOutput(
            loss=loss,
            logits=output.logits,
            attention_mask=layout.attention_mask,
            position_ids=layout.position_ids,
            labels=layout.labels,
            visual_positions=layout.visual_positions,
            injection_stats=None if injection is None or not output_injection_stats else injection.stats,
            attentions=output.attentions,
        )

    # ----- checkpoints ---------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        id_or_dir: str | os.PathLike,
        *,
        revision: str | None = None,
        quantization: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        **config_overrides: Any,
    ) -> "MFRSVLM":
        """Load an rsfuse, released MF-RSVLM or llava-hf folder (layout chosen from ``config.json``'s ``model_type``),
        or a Hub repository id (``revision``, ``cache_dir``, ``local_files_only``; ``HF_HUB_OFFLINE`` honoured; a
        folder that exists wins). ``quantization``: None | "int8" | "int4" | "nf4", the decoder's linear layers
        weight-only (``rsfuse.model.quantization``).

        ``config_overrides`` change non-shape settings (e.g. ``attention_backend``, ``window_layout``).
        """
        from rsfuse.model.loading import load_pretrained  # noqa: PLC0415

        return load_pretrained(cls, id_or_dir, revision=revision, quantization=quantization, cache_dir=cache_dir,
                               local_files_only=local_files_only, dtype=dtype, device=device, **config_overrides)

    @classmethod
    def from_parts(
        cls,
        *,
        vision: str | os.PathLike | None = None,
        llm: str | os.PathLike | None = None,
        llava: str | os.PathLike | None = None,
        quantization: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        **config_overrides: Any,
    ) -> "MFRSVLM":
        """Assemble from an HF CLIP folder + an HF Llama/Vicuna folder and/or a LLaVA-1.5 folder (projector and
        decoder), each a folder or a Hub repository id; the injectors (and the projector without LLaVA) are newly
        initialised. ``quantization`` as in `from_pretrained`."""
        from rsfuse.model.loading import load_from_parts  # noqa: PLC0415

        return load_from_parts(cls, vision=vision, llm=llm, llava=llava, quantization=quantization, dtype=dtype,
                               device=device, hub={"cache_dir": cache_dir, "local_files_only": local_files_only},
                               **config_overrides)

    def save_pretrained(
        self,
        path: str | os.PathLike,
        *,
        tokenizer: Any = None,
        max_shard_bytes: int = 2 * 1024**3,
        template: str | None = None,
    ) -> Path:
        """Write an rsfuse folder: ``config.json`` (``model_type: "rsfuse_mfrsvlm"``), sharded safetensors + index,
        and ``tokenizer.model`` (from ``tokenizer``, a path or an object with ``save_pretrained``, else the one this
        model was loaded with), and the conversation template for ``MFRSVLMProcessor`` (``template``, else the
        loaded folder's, else "vicuna_v1")."""
        from rsfuse.model.loading import save_pretrained  # noqa: PLC0415

        return save_pretrained(self, path, tokenizer=tokenizer, max_shard_bytes=max_shard_bytes, template=template)
