"""``CLIPVisionTower``: the CLIP ViT of HF ``CLIPVisionModel`` with timm-style ``forward_intermediates``.

Module and state-dict keys are HF's without the ``vision_model.`` prefix::

    embeddings.class_embedding                [C]
    embeddings.patch_embedding.weight         [C, 3, P, P]
    embeddings.position_embedding.weight      [1 + G*G, C]
    pre_layrnorm.{weight,bias}
    encoder.layers.{i}.self_attn.{q,k,v,out}_proj.{weight,bias}
    encoder.layers.{i}.layer_norm1.* / mlp.fc1.* / mlp.fc2.* / layer_norm2.*
    post_layernorm.{weight,bias}

Hidden states are numbered as HF's ``output_hidden_states``: 0 is the embedding output after ``pre_layrnorm``, i is the
output of block i (1-based), so -1 is the last block and -2 the one before (LLaVA's choice).
"""

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from torch.utils.checkpoint import checkpoint

from rsfuse._typing import Float, Tensor, typecheck
from rsfuse.encoders.clip_config import CLIPVisionConfig
from rsfuse.ops.attention import attention
from rsfuse.options import ATTENTION_BACKENDS, check_option

__all__ = ["CLIPVisionTower", "CLIPVisionEmbeddings", "CLIPEncoderLayer"]


class QuickGELU(nn.Module):
    """``x · sigmoid(1.702 x)``, OpenAI CLIP's activation."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def _activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return nn.GELU(approximate="tanh")
    raise ValueError(f"CLIPVisionConfig.hidden_act {name!r} is not supported")


class CLIPVisionEmbeddings(nn.Module):
    """Patch embedding + CLS token + learned positions; other grid sizes interpolate the patch positions bicubically."""

    def __init__(self, *, config: CLIPVisionConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.grid_size = config.grid_size
        self.class_embedding = nn.Parameter(torch.randn(config.hidden_size) * config.hidden_size**-0.5)
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size, bias=False
        )
        self.position_embedding = nn.Embedding(config.num_positions, config.hidden_size)
        self._position_cache: dict[tuple, Tensor] = {}

    def positions_for_grid(self, rows: int, cols: int) -> Float[Tensor, "positions dim"]:
        """Position table for a ``rows × cols`` patch grid: CLS row kept, patch rows bicubically resized (HF's method).

        Interpolated tables are cached per grid while no gradient flows into them; the cache key includes the weight's
        version counter, so in-place updates (optimizer steps, ``load_state_dict``) invalidate it.
        """
        table = self.position_embedding.weight
        if (rows, cols) == (self.grid_size, self.grid_size):
            return table
        cacheable = not (torch.is_grad_enabled() and table.requires_grad)
        key = (rows, cols, table.data_ptr(), table._version, table.dtype, table.device)
        if cacheable and key in self._position_cache:
            return self._position_cache[key]
        cls_position, patch_positions = table[:1], table[1:]
        grid = rearrange(patch_positions, "(h w) c -> 1 c h w", h=self.grid_size, w=self.grid_size)
        grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
        resized = torch.cat([cls_position, rearrange(grid, "1 c h w -> (h w) c")], dim=0)
        if cacheable:
            self._position_cache = {key: resized.detach()}
        return resized

    def forward(self, pixels: Float[Tensor, "batch channels height width"]) -> Float[Tensor, "batch positions dim"]:
        height, width = pixels.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"CLIPVisionTower: input size {height}×{width} is not a multiple of the patch size {self.patch_size}"
            )
        weight = self.patch_embedding.weight
        patches = rearrange(self.patch_embedding(pixels.to(weight.dtype)), "b c h w -> b (h w) c")
        cls_token = repeat(self.class_embedding.to(patches.dtype), "c -> b 1 c", b=patches.shape[0])
        tokens = torch.cat([cls_token, patches], dim=1)
        return tokens + self.positions_for_grid(height // self.patch_size, width // self.patch_size)


class CLIPAttention(nn.Module):
    """Multi-head self-attention with HF's separate ``q/k/v/out`` projections, computed by ``rsfuse.ops.attention``."""

    def __init__(self, *, config: CLIPVisionConfig, attention_backend: str):
        super().__init__()
        width = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.attention_backend = attention_backend
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Float[Tensor, "batch tokens dim"]) -> Float[Tensor, "batch tokens dim"]:
        q, k, v = (
            rearrange(proj(x), "b n (h d) -> b n h d", h=self.num_heads) for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        mixed = attention(q, k, v, backend=self.attention_backend)
        return self.out_proj(rearrange(mixed, "b n h d -> b n (h d)"))


class CLIPMLP(nn.Module):
    def __init__(self, *, config: CLIPVisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = _activation(config.hidden_act)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, *, config: CLIPVisionConfig, attention_backend: str):
        super().__init__()
        self.self_attn = CLIPAttention(config=config, attention_backend=attention_backend)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config=config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, *, config: CLIPVisionConfig, attention_backend: str):
        super().__init__()
        self.layers = nn.ModuleList(
            CLIPEncoderLayer(config=config, attention_backend=attention_backend) for _ in range(config.num_hidden_layers)
        )


class CLIPVisionTower(nn.Module):
    """CLIP ViT equal to HF ``CLIPVisionModel`` (keys without ``vision_model.``), built for intermediate features.

    ``attention_backend`` is passed to ``rsfuse.ops.attention`` ("auto", "sdpa", "xformers", "math").
    ``gradient_checkpointing=True`` recomputes each block in the backward pass while training.
    """

    def __init__(
        self, config: CLIPVisionConfig, *, attention_backend: str = "auto", gradient_checkpointing: bool = False
    ):
        super().__init__()
        if not isinstance(config, CLIPVisionConfig):
            raise TypeError(f"CLIPVisionTower expects a CLIPVisionConfig, got {type(config).__name__}")
        check_option(attention_backend, ATTENTION_BACKENDS, "CLIPVisionTower: attention_backend")
        self.config = config
        self.gradient_checkpointing = gradient_checkpointing
        self.embeddings = CLIPVisionEmbeddings(config=config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config=config, attention_backend=attention_backend)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks; valid hidden-state indices are ``-(num_layers + 1) .. num_layers``."""
        return self.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def normalize_indices(self, indices: Sequence[int]) -> list[int]:
        """Map HF hidden-state indices (negatives count from the end) to ``0 .. num_layers``; raise on bad values."""
        if isinstance(indices, (int, torch.Tensor)) or not isinstance(indices, Sequence):
            raise TypeError(f"CLIPVisionTower: indices must be a sequence of ints such as [8, 16, 24], got {indices!r}")
        if len(indices) == 0:
            raise ValueError("CLIPVisionTower: indices must name at least one hidden state")
        count = self.num_layers + 1
        normalized = []
        for index in indices:
            if isinstance(index, bool) or not isinstance(index, int):
                raise TypeError(f"CLIPVisionTower: hidden-state index {index!r} is not an int")
            if not -count <= index < count:
                raise IndexError(
                    f"CLIPVisionTower: hidden-state index {index} is out of range for a tower with {self.num_layers} "
                    f"blocks (valid: {-count} .. {self.num_layers})"
                )
            normalized.append(index % count)
        return normalized

    def _run_block(self, block: CLIPEncoderLayer, hidden: Tensor) -> Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, hidden, use_reentrant=False)
        return block(hidden)

    def _check_pixels(self, pixels: Tensor) -> None:
        if pixels.ndim != 4 or pixels.shape[1] != self.config.num_channels:
            raise ValueError(
                f"CLIPVisionTower: pixels must be [B, {self.config.num_channels}, H, W], got {tuple(pixels.shape)}"
            )

    @typecheck
    def forward_intermediates(
        self,
        pixels: Float[Tensor, "batch channels height width"],
        indices: Sequence[int],
        stop_early: bool = True,
    ) -> list[Float[Tensor, "batch patches dim"]]:
        """Hidden states ``indices`` (HF numbering), CLS dropped: one ``[B, (H/P)·(W/P), C]`` per index, in order.

        With ``stop_early`` the blocks after the deepest requested index are not run.
        """
        self._check_pixels(pixels)
        wanted = self.normalize_indices(indices)
        deepest = max(wanted) if stop_early else self.num_layers
        hidden = self.pre_layrnorm(self.embeddings(pixels))
        states = {0: hidden}
        for number, block in enumerate(self.encoder.layers[:deepest], start=1):
            hidden = self._run_block(block, hidden)
            if number in wanted:
                states[number] = hidden
        return [states[index][:, 1:] for index in wanted]

    @typecheck
    def forward(self, pixels: Float[Tensor, "batch channels height width"]) -> Float[Tensor, "batch positions dim"]:
        """HF's ``last_hidden_state``: output of the last block, ``[B, 1 + N, C]`` with CLS first, no post-LayerNorm."""
        self._check_pixels(pixels)
        hidden = self.pre_layrnorm(self.embeddings(pixels))
        for block in self.encoder.layers:
            hidden = self._run_block(block, hidden)
        return hidden

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        attention_backend: str = "auto",
        num_attention_heads: int | None = None,
    ) -> "CLIPVisionTower":
        """Read an HF CLIP folder (vision-only or full) or an OpenAI/open_clip file or folder.

        ``dtype`` defaults to float32; ``num_attention_heads`` overrides the head count inferred for OpenAI layouts.
        """
        # Imported here: rsfuse.checkpoints sits above the components (its readers use their configs).
        from rsfuse.checkpoints.assign import assign_weights, check_nothing_on_meta  # noqa: PLC0415
        from rsfuse.checkpoints.clip import read_clip_vision  # noqa: PLC0415

        config, state_dict = read_clip_vision(path, num_attention_heads=num_attention_heads)
        with torch.device("meta"):
            tower = cls(config, attention_backend=attention_backend)
        dtype = torch.float32 if dtype is None else dtype
        assign_weights(tower, [(path, state_dict)], dtype=dtype, device=device, source=path)
        check_nothing_on_meta(tower, source=path)
        return tower

