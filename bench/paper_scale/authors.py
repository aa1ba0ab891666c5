"""The authors' detail stage as their code runs it (one tower call per window size keeping every hidden state,
Python loops for the Hann stitching), and the matmul FLOP counts."""

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from rsfuse import MFRSVLM, MFRSVLMConfig
from rsfuse.encoders.windows import plan_window_grid



# ----- the authors' detail stage -----------------------------------------------------------------------------------
class AuthorsDetailStage:
    """The detail stage as the authors' code runs it (Yunkaidang/RSVLM ``DeepStackProcessor`` with the
    ``CLIPVisionTower.extract_hidden_states`` of its LLaVA tower), re-stated from its mechanics (docs/DESIGN_NOTES.md §1):

    * images in a dtype other than fp16/fp32/fp64 (bf16) are worked on in fp32; global view and canvas by bilinear
      ``F.interpolate`` (``align_corners=False``);
    * global view: one tower call with every hidden state, the selected one without CLS, cast to the working dtype;
    * per window size: ``unfold`` on H then W, ``.contiguous().view(-1, C, w, w)`` (the "reference" window layout),
      small windows bilinearly upsampled to the base window, then ALL windows of that size in ONE tower call with
      ``output_hidden_states=True`` (all ``depth + 1`` states kept, CLS sliced off);
    * per kept layer: the window grids viewed as ``[B, n, n, s, s, D]``, average-pooled when the window is small,
      and stitched with a Python loop over windows: ``canvas[:, top:top+t, left:left+t] += f · w``, Hann weights in the
      tower's dtype, output ``canvas / clamp(weights, 1e-6)``;
    * stacks: ``canvas[:, r::2, c::2]`` for r, c in (0, 1), each reshaped to ``[B, N, D]``.

    ``hidden_states(pixels)`` returns every hidden state, CLS dropped (``[n, N, D]`` each, HF numbering).
    ``__call__(images) -> (global [B, N, D] or None, list of K stacks [B, N, D])``.
    """

    def __init__(
        self,
        hidden_states: Callable[[torch.Tensor], Sequence[torch.Tensor]],
        *,
        tower_dtype: torch.dtype,
        patch_size: int,
        global_size: int,
        canvas_size: int,
        base_window: int,
        window_scales: Sequence[float],
        detail_layers: Sequence[int],
        global_layer: int | None,
        factor: int = 2,
    ) -> None:
        self.hidden_states = hidden_states
        self.tower_dtype = tower_dtype
        self.global_size, self.canvas_size, self.base_window = global_size, canvas_size, base_window
        self.levels = [
            plan_window_grid(scale=scale, canvas_size=canvas_size, base_window=base_window, patch_size=patch_size)
            for scale in window_scales
        ]
        self.detail_layers = list(detail_layers)
        self.global_layer = global_layer
        self.factor = factor
        self.base_side = base_window // patch_size

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        work = images if images.dtype in (torch.float16, torch.float32, torch.float64) else images.float()
        global_tokens = None
        if self.global_layer is not None:
            low = F.interpolate(work, size=(self.global_size,) * 2, mode="bilinear", align_corners=False)
            global_tokens = self.hidden_states(low.to(self.tower_dtype))[self.global_layer].to(work.dtype)
        canvas = F.interpolate(work, size=(self.canvas_size,) * 2, mode="bilinear", align_corners=False)
        batch, channels = canvas.shape[:2]
        stacks = []
        for level in self.levels:
            size, step = level.window_pixels, level.stride_pixels
            windows = canvas.unfold(2, size, step).unfold(3, size, step).contiguous().view(-1, channels, size, size)
            if size != self.base_window:
                windows = F.interpolate(windows, size=(self.base_window,) * 2, mode="bilinear", align_corners=False)
            states = self.hidden_states(windows.to(self.tower_dtype))
            for layer in self.detail_layers:
                stitched = self._stitch(states[layer], level, batch)
                for row in range(self.factor):
                    for col in range(self.factor):
                        sampled = stitched[:, row :: self.factor, col :: self.factor, :]
                        stacks.append(sampled.reshape(batch, -1, sampled.shape[-1]))
        return global_tokens, stacks

    def _stitch(self, features: torch.Tensor, level, batch: int) -> torch.Tensor:
        n, base, side, stride = level.per_side, self.base_side, level.token_side, level.stride_tokens
        dim = features.shape[-1]
        grids = features.view(batch, n, n, base, base, dim)
        if level.pool > 1:
            planes = grids.view(batch * n * n, base, base, dim).permute(0, 3, 1, 2)
            pooled = F.avg_pool2d(planes, kernel_size=level.pool, stride=level.pool).permute(0, 2, 3, 1)
            grids = pooled.reshape(batch, n, n, side, side, dim)
        total = (n - 1) * stride + side
        canvas = grids.new_zeros(batch, total, total, dim)
        weight_canvas = grids.new_zeros(batch, total, total, 1)
        profile = torch.hann_window(side, periodic=False)
        weight = torch.outer(profile, profile).to(device=grids.device, dtype=grids.dtype).view(1, side, side, 1)
        for row in range(n):
            for col in range(n):
                top, left = row * stride, col * stride
                canvas[:, top : top + side, left : left + side, :] += grids[:, row, col] * weight
                weight_canvas[:, top : top + side, left : left + side, :] += weight
        return canvas / torch.clamp(weight_canvas, min=1e-6)


def hf_all_hidden_states(clip) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """The authors' ``extract_hidden_states``: one call, ``output_hidden_states=True``, CLS sliced off each state."""

    def run(pixels: torch.Tensor) -> list[torch.Tensor]:
        outputs = clip(pixel_values=pixels, output_hidden_states=True)
        return [state[:, 1:] for state in outputs.hidden_states]

    return run


def authors_stage_for(model: MFRSVLM, hidden_states, *, include_global: bool = True) -> AuthorsDetailStage:
    config = model.config
    return AuthorsDetailStage(
        hidden_states,
        tower_dtype=model.dtype,
        patch_size=config.vision.patch_size,
        global_size=config.global_size,
        canvas_size=config.canvas_size,
        base_window=config.base_window,
        window_scales=config.window_scales,
        detail_layers=config.detail_layers,
        global_layer=config.global_hidden_index if include_global else None,
        factor=config.stack_factor,
    )


def vit_pass_flops(vision, blocks: int) -> int:
    """Matmul FLOPs of one tower pass through ``blocks`` blocks: patch embedding, q/k/v/out and MLP projections,
    attention scores and mixing (2 FLOPs per multiply-add; CLS included)."""
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    width, hidden = vision.hidden_size, vision.intermediate_size
    patch_embedding = 2 * (tokens - 1) * vision.num_channels * vision.patch_size**2 * width
    per_block = 2 * tokens * (4 * width * width + 2 * width * hidden) + 2 * 2 * tokens * tokens * width
    return patch_embedding + blocks * per_block


def detail_flops_per_image(config: MFRSVLMConfig, windows: int) -> int:
    """Global pass (up to its hidden state) + every window pass (up to the deepest kept layer)."""
    global_blocks = config.global_hidden_index
    window_blocks = max(config.detail_layers)
    return vit_pass_flops(config.vision, global_blocks) + windows * vit_pass_flops(config.vision, window_blocks)


def relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    ours, theirs = ours.float(), theirs.float()
    return float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-12))


