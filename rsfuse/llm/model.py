"""``LlamaForCausalLM``: the Llama / Vicuna decoder with HF-compatible state-dict keys.

Keys: ``model.embed_tokens``, ``model.layers.{i}.self_attn.{q,k,v,o}_proj``, ``model.layers.{i}.mlp.{gate,up,down}_proj``,
``model.layers.{i}.{input,post_attention}_layernorm``, ``model.norm``, ``lm_head`` (tied to the embeddings when
``tie_word_embeddings``). Masks follow HF: ``attention_mask`` is ``[B, past + new]`` with 1 for real tokens.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from rsfuse._typing import Bool, Float, Int, Shaped, Tensor, typecheck
from rsfuse.llm.cache import CacheWrite, DynamicKVCache, KVCache
from rsfuse.llm.config import LlamaConfig
from rsfuse.llm.layers import AttentionMask, LlamaDecoderLayer, RMSNorm
from rsfuse.llm.rope import RotaryEmbedding

__all__ = [
    "IGNORE_INDEX",
    "LayerInjection",
    "LlamaForCausalLM",
    "LlamaModel",
    "LlamaOutput",
    "build_attention_mask",
    "causal_lm_loss",
    "default_position_ids",
]

IGNORE_INDEX = -100


@dataclass
class LlamaOutput:
    """``loss`` (mean over labels != -100, None without labels), ``logits [B, M, vocab]``, the cache (or None)."""

    loss: Tensor | None
    logits: Tensor
    past_key_values: KVCache | None = None
    attentions: list[Tensor] | None = None
    """With ``output_attentions=True``: each layer's softmax weights ``[B, H, M, total]`` (float32)."""


def build_attention_mask(
    attention_mask: Tensor | None, *, new_tokens: int, past_tokens: int, device: torch.device
) -> AttentionMask:
    """The one mask all layers share.

    No padding mask and no cache: SDPA's built-in causal path (no mask tensor). One new token and no padding: no
    mask at all. Otherwise a boolean ``[B, 1, new, past + new]`` = padding & bottom-right causal triangle.
    """
    total = past_tokens + new_tokens
    if attention_mask is None:
        if past_tokens == 0:
            return AttentionMask(mask=None, causal=new_tokens > 1)
        if new_tokens == 1:
            return AttentionMask(mask=None, causal=False)
    elif attention_mask.shape[-1] != total:
        raise ValueError(
            f"attention_mask has {attention_mask.shape[-1]} columns; expected past + new = {past_tokens} + "
            f"{new_tokens} = {total} (HF convention: the mask covers cached and new positions)"
        )
    rows = rearrange(torch.arange(past_tokens, total, device=device), "m -> m 1")
    cols = rearrange(torch.arange(total, device=device), "n -> 1 n")
    mask = rearrange(cols <= rows, "m n -> 1 1 m n")
    if attention_mask is not None:
        mask = mask & rearrange(attention_mask.to(device=device, dtype=torch.bool), "b n -> b 1 1 n")
    return AttentionMask(mask=mask, causal=False)


def cache_attention_mask(
    attention_mask: Tensor | None, slots: Int[Tensor, "#batch new"], *, width: int, new_tokens: int
) -> AttentionMask:
    """The mask of a forward that writes its ``new_tokens`` at ``slots`` of a cache and attends over its first
    ``width`` columns: a token sees the real columns (``attention_mask``) up to its own slot, and always itself, so no
    row is empty. Without a mask every column up to the slot is real: one new token then needs no mask at all, and
    a first call (``width == new_tokens``) is plain causal."""
    if attention_mask is None:
        if new_tokens == 1:
            return AttentionMask(mask=None, causal=False)
        if width == new_tokens:
            return AttentionMask(mask=None, causal=True)
    columns = torch.arange(width, device=slots.device)
    slot = slots.unsqueeze(-1)  # [B, M, 1] (native views: this runs once per decoded token)
    mask = columns <= slot
    if attention_mask is not None:
        mask = mask & (attention_mask.to(torch.bool).unsqueeze(1) | (columns == slot))
    return AttentionMask(mask=mask.unsqueeze(1), causal=False, all_rows_attend=True)


def position_ids_from_mask(attention_mask: Bool[Tensor, "batch total"]) -> Int[Tensor, "batch total"]:
    """``cumsum(mask) − 1`` clamped at 0: real tokens numbered from 0 whatever the padding."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp_min(0)


def default_position_ids(
    attention_mask: Tensor | None, *, new_tokens: int, past_tokens: int, device: torch.device
) -> Int[Tensor, "#batch new"]:
    """``cumsum(mask) - 1`` clamped at 0 over the new columns (left padding works); ``past + arange`` without a mask."""
    if attention_mask is None:
        return rearrange(torch.arange(past_tokens, past_tokens + new_tokens, device=device), "m -> 1 m")
    return position_ids_from_mask(attention_mask.to(device=device))[:, -new_tokens:]


@runtime_checkable
class LayerInjection(Protocol):
    """What a decoder forward may be given to edit the hidden states just before some of its layers (rsfuse's
    ``DecoderInjection`` is one): ``injection(layer_index, hidden) -> hidden`` for each index in ``layer_indices``."""

    @property
    def layer_indices(self) -> frozenset[int]: ...

    def __call__(self, layer_index: int, hidden: Tensor) -> Tensor: ...


class LlamaModel(nn.Module):
    """Embeddings, decoder layers and final norm; ``forward`` returns the normed hidden states."""

    def __init__(self, config: LlamaConfig, *, attention_backend: str = "auto") -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, layer_index=index, attention_backend=attention_backend)
            for index in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)

    @typecheck
    def forward(
        self,
        inputs_embeds: Float[Tensor, "batch new dim"],
        *,
        attention_mask: Shaped[Tensor, "batch total"] | None = None,
        position_ids: Int[Tensor, "#batch new"] | None = None,
        cache: KVCache | None = None,
        cache_position: Int[Tensor, "#batch new"] | None = None,
        cache_rows: Int[Tensor, " batch"] | None = None,
        injection: LayerInjection | None = None,
        attention_weights: list[Tensor] | None = None,
    ) -> Float[Tensor, "batch new dim"]:
        """Normed hidden states of the new positions. ``injection`` (a prefill's visual context bound to injectors)
        edits the hidden states just before the layers it names; decoding steps pass none. ``attention_weights``: a
        list that receives each layer's softmax weights ``[B, H, M, N]`` (float32), in layer order.

        With a ``cache``: ``cache_position [B, M]`` (or ``[1, M]``) are the cache slots of the new tokens and
        ``attention_mask`` covers the cache columns attended (``0:width``; 1 = real); ``cache_rows [B]`` the cache rows
        of the batch's rows (a prefill of some rows of a running batch). Without ``cache_position`` the cache appends
        (``DynamicKVCache``; HF convention, the mask covering past + new)."""
        new_tokens = inputs_embeds.shape[1]
        device = inputs_embeds.device
        write = None
        if cache is not None:
            if cache_position is None:
                write = cache.next_write(new_tokens)
            elif attention_mask is None:
                raise ValueError("cache_position needs an attention_mask over the attended cache columns")
            else:
                write = CacheWrite(slots=cache_position, rows=cache_rows, width=attention_mask.shape[-1])
            if attention_mask is not None and attention_mask.shape[-1] != write.width:
                raise ValueError(
                    f"attention_mask has {attention_mask.shape[-1]} columns; expected past + new = "
                    f"{write.width - new_tokens} + {new_tokens} = {write.width} (HF convention: the mask covers "
                    "cached and new positions)"
                )
            mask = cache_attention_mask(attention_mask, write.slots, width=write.width, new_tokens=new_tokens)
            if position_ids is None:  # a token's position counts the real columns before it
                position_ids = write.slots if attention_mask is None else position_ids_from_mask(
                    attention_mask.to(torch.bool)).gather(1, write.slots.expand(attention_mask.shape[0], -1))
        else:
            if position_ids is None:
                position_ids = default_position_ids(attention_mask, new_tokens=new_tokens, past_tokens=0, device=device)
            mask = build_attention_mask(attention_mask, new_tokens=new_tokens, past_tokens=0, device=device)
        position_embeddings = self.rotary_emb(position_ids, inputs_embeds.dtype)
        injected = frozenset() if injection is None else injection.layer_indices
        hidden_states = inputs_embeds
        for index, layer in enumerate(self.layers):
            if index in injected:
                hidden_states = injection(index, hidden_states)
            hidden_states = layer(
                hidden_states,
                position_embeddings=position_embeddings,
                attention_mask=mask,
                position_ids=position_ids,
                cache=cache,
                cache_write=write,
                weights_out=attention_weights,
            )
        return self.norm(hidden_states)


class LlamaForCausalLM(nn.Module):
    """Llama decoder with a language-model head. ``attention_backend`` is passed to ``rsfuse.ops.attention``."""

    def __init__(self, config: LlamaConfig, *, attention_backend: str = "auto") -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, attention_backend=attention_backend)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.reset_parameters()
        self.tie_weights()

    # ----------------------------------------------------------------------------------------------- parameters
    def reset_parameters(self) -> None:
        """HF's initialisation: normal(0, initializer_range) for linear and embedding weights, zero biases, unit norms."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
                if module.padding_idx is not None and module.weight.device.type != "meta":
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def tie_weights(self) -> None:
        """Share ``lm_head.weight`` with the input embeddings when ``config.tie_word_embeddings``."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    @property
    def gradient_checkpointing(self) -> bool:
        """Recompute each decoder layer in backward (``torch.utils.checkpoint``, ``use_reentrant=False``)."""
        return all(layer.gradient_checkpointing for layer in self.model.layers)

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enabled: bool) -> None:
        for layer in self.model.layers:
            layer.gradient_checkpointing = bool(enabled)

    def gradient_checkpointing_enable(self) -> None:
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.gradient_checkpointing = False

    # ------------------------------------------------------------------------------------------------- forward
    @typecheck
    def forward(
        self,
        input_ids: Int[Tensor, "batch new"] | None = None,
        *,
        inputs_embeds: Float[Tensor, "batch new dim"] | None = None,
        attention_mask: Shaped[Tensor, "batch total"] | None = None,
        position_ids: Int[Tensor, "#batch new"] | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        cache_position: Int[Tensor, "#batch new"] | None = None,
        cache_rows: Int[Tensor, " batch"] | None = None,
        labels: Int[Tensor, "batch new"] | None = None,
        logits_to_keep: int = 0,
        injection: LayerInjection | None = None,
        output_attentions: bool = False,
    ) -> LlamaOutput:
        """Logits for the new positions (``logits_to_keep > 0``: only the last that many); loss when ``labels`` given.

        Labels are HF-style: aligned with the inputs and shifted inside; -100 is ignored; the loss is the mean over
        the remaining targets (0 when there are none).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("LlamaForCausalLM.forward: pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.model.embed_tokens(input_ids)
        cache = past_key_values
        if use_cache and cache is None:
            cache = DynamicKVCache()
        attentions: list[Tensor] | None = [] if output_attentions else None
        hidden_states = self.model(
            inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            cache_position=cache_position, cache_rows=cache_rows, injection=injection, attention_weights=attentions,
        )
        if logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(hidden_states)
        loss = None if labels is None else causal_lm_loss(logits, labels)
        kept = cache if (use_cache or past_key_values is not None) else None
        return LlamaOutput(loss=loss, logits=logits, past_key_values=kept, attentions=attentions)

    # --------------------------------------------------------------------------------------------- checkpoints
    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        rename: Callable[[str], str | None] | None = None,
        attention_backend: str = "auto",
    ) -> "LlamaForCausalLM":
        """Load an HF Llama/Vicuna folder shard by shard into a model built on the meta device (peak memory ≈ one
        copy of the weights plus one shard). ``dtype`` None keeps the stored dtype. ``rename`` maps or drops
        (returns None) checkpoint keys, e.g. ``rsfuse.checkpoints.llama.keep_llama_keys`` for LLaVA folders.
        Returns the model in eval mode."""
        # Imported here: rsfuse.checkpoints sits above rsfuse.llm in the layering and imports its config.
        from rsfuse.checkpoints.assign import assign_weights, check_nothing_on_meta  # noqa: PLC0415
        from rsfuse.checkpoints.llama import iter_llama_shards, read_llama_config  # noqa: PLC0415

        config = read_llama_config(folder)
        with torch.device("meta"):
            model = cls(config, attention_backend=attention_backend)
        assign_weights(
            model, iter_llama_shards(folder, rename=rename), dtype=dtype, device=device, source=folder,
            skip={"lm_head.weight"} if config.tie_word_embeddings else (),
            hint=" (pass rename= to map or drop keys, e.g. rsfuse.checkpoints.llama.keep_llama_keys)",
        )
        model.tie_weights()
        model.model.rotary_emb.reset_parameters(device)
        check_nothing_on_meta(model, source=folder)
        return model.eval()

    def save_pretrained(self, folder: str | os.PathLike, *, max_shard_bytes: int = 2 * 1024**3) -> None:
        """Write ``config.json`` and sharded safetensors with ``model.safetensors.index.json`` (HF-readable)."""
        from rsfuse.checkpoints.io import save_sharded  # noqa: PLC0415  (see from_pretrained)

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state_dict = self.state_dict()
        if self.config.tie_word_embeddings:
            state_dict.pop("lm_head.weight", None)
        save_sharded(state_dict, folder, max_shard_bytes=max_shard_bytes)
        config = self.config.to_dict()
        config["torch_dtype"] = config["dtype"] = str(self.model.embed_tokens.weight.dtype).removeprefix("torch.")
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def causal_lm_loss(logits: Float[Tensor, "batch tokens vocab"], labels: Int[Tensor, "batch tokens"]) -> Tensor:
    """Next-token cross-entropy in float32: position t predicts ``labels[t + 1]``; -100 ignored; mean over targets."""
    targets = labels[:, 1:]
    token_losses = F.cross_entropy(
        rearrange(logits[:, :-1].float(), "b m v -> (b m) v"),
        rearrange(targets, "b m -> (b m)"),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return token_losses / (targets != IGNORE_INDEX).sum().clamp_min(1)
