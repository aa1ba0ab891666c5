"""The synthetic ablation's variants, the paper's claims they test, and the budget and model every run shares."""

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Variant", "VARIANTS", "COMPARISONS", "STUDY_OVERRIDES", "GOAL_PAIR", "study_overrides"]


@dataclass(frozen=True)
class Variant:
    description: str
    overrides: tuple[str, ...]

VARIANTS: dict[str, Variant] = {
    "global_only": Variant("global tokens only (model.detail=false), LLaVA-1.5 style", ("model.detail=false",)),
    "mf_rsvlm": Variant("full MF-RSVLM: layers {1/3, 2/3, last}, scales {1.0, 0.5}, injection at 2 of 4 layers", ()),
    "layers_last": Variant("detail layers {last} only", ("model.detail_layers=[3]",)),
    "scales_1": Variant("window scales {1.0} only", ("model.window_scales=[1.0]",)),
    "inject_one": Variant("injection before 1 decoder layer ([2])", ("model.injection_layers=[2]",)),
    "inject_four": Variant("injection before all 4 decoder layers ([1,2,3,4])", ("model.injection_layers=[1,2,3,4]",)),
    "layout_reference": Variant("window_layout=reference (channel-mixed windows)", ("model.window_layout=reference",)),
    "canvas_upsampled": Variant("canvas_source=upsampled (the reference: global view upsampled 2x)",
                                ("model.canvas_source=upsampled",)),
    "residual_zero": Variant("residual_scale_init=0.0", ("model.residual_scale_init=0.0",)),
    "router_token": Variant("router_mode=token (per-token routing)", ("model.router_mode=token",)),
}

# (variant expected to be better, variant expected to be worse, what the paper / the design says)
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("mf_rsvlm", "global_only", "paper: detail fusion + injection beats the global-only LLaVA-1.5 pipeline, "
                                "most on small objects"),
    ("mf_rsvlm", "layers_last", "paper ablation: fusing ViT layers 8/16/24 beats reduced-layer variants"),
    ("mf_rsvlm", "scales_1", "paper ablation: 336 + 168 windows beat a single window size"),
    ("inject_four", "inject_one", "paper ablation: injecting at more layers (2/4/6/8) beats fewer injection layers"),
    ("mf_rsvlm", "inject_one", "paper ablation (same direction, default 2 layers vs 1)"),
    ("mf_rsvlm", "layout_reference", "not in the paper: true windows expected to beat the reference's channel-mixed "
                                     "windows when training from scratch"),
    ("mf_rsvlm", "canvas_upsampled", "not in the paper: real 2x pixels expected to beat the upsampled canvas"),
    ("mf_rsvlm", "residual_zero", "not in the paper: the reference initialises the residual scale to 1.0"),
    ("mf_rsvlm", "router_token", "not in the paper: the reference routes per sample"),
)

# The shared budget and model of every run (training recipe keys; the variant's overrides come last). The model is the
# `synthetic_study` preset of MFRSVLMConfig (tower width 64, 3 blocks, detail layers {1, 2, 3}, canvas from the image).
STUDY_OVERRIDES: tuple[str, ...] = (
    "model.preset=synthetic_study",
    "train.trainable.vit=frozen",
    "train.cache_vision_features=true",
    "train.lr=2e-3",
    "train.warmup_ratio=0.05",
    "save_every=0",
    "train.val_every=0",
    "data.val_json=",
    "eval.after_train=false",
    "train.log_every=10",
)

GOAL_PAIR = ("global_only", "mf_rsvlm")

def study_overrides(args, tower: Path | None) -> list[str]:
    """Training keys shared by every run: STUDY_OVERRIDES, the shared tower, then ``--extra``."""
    shared = [f"model.vision_weights={tower}", f"train.feature_cache_dir={tower.parent / 'features'}"] if tower else []
    return [*STUDY_OVERRIDES, *shared, *args.extra]
