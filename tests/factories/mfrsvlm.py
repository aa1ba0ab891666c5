"""Tiny MF-RSVLM models and checkpoints in the real on-disk layouts.

* ``micro_config()``: an MF-RSVLM config small enough for many CPU tests (32-px tower with an 8×8 token grid, so both
  window scales and the Hann blend behave as in the paper; 4-layer decoder with a 512-token vocabulary that fits the
  tiny SentencePiece tokenizer).
* ``make_model(seed, **overrides)``: a random ``MFRSVLM`` with every weight drawn at a useful scale (eval mode).
* ``write_released_checkpoint(folder, ...)``: the released MF-RSVLM layout written by hand, key by key, exactly as
  docs/DESIGN_NOTES.md §3 describes it (``config.json`` model_type "mfrsvlm", 2 safetensors shards + index with the Llama keys,
  ``model.mm_projector.*``, ``model.deepstack_*.r.*`` and ``model.deepstack_residual_scale``; the tower in
  ``vision_tower/`` as HF CLIP config + ``pytorch_model.bin`` with ``vision_model.*`` keys; ``tokenizer.model``).
* ``write_llava_folder(folder, ...)``: a LLaVA-1.5 folder (HF Llama + ``model.mm_projector.*`` + LLaVA config fields).
"""

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from factories.clip import write_hf_clip_vision
from factories.llama import make_hf_llama
from factories.tokenizer import TINY_VOCAB_SIZE, tiny_tokenizer_dir
from rsfuse.encoders.clip_config import CLIPVisionConfig
from rsfuse.llm.config import LlamaConfig
from rsfuse.model import MFRSVLM, MFRSVLMConfig
from rsfuse.synthetic.benchmark import generate

__all__ = [
    "MICRO_VISION",
    "micro_llm",
    "micro_config",
    "make_model",
    "randomize",
    "write_released_checkpoint",
    "write_llava_folder",
    "released_injector_keys",
    "TowerCounter",
]

MICRO_VISION = CLIPVisionConfig(
    image_size=32, patch_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2
)


def micro_llm(**overrides) -> LlamaConfig:
    fields = dict(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def micro_hf_llama(seed: int, **overrides):
    """A transformers Llama with the micro decoder's shapes (``overrides`` as for `micro_llm`) and random weights."""
    llm = micro_llm(**overrides)
    return make_hf_llama(
        seed=seed,
        vocab_size=llm.vocab_size,
        hidden_size=llm.hidden_size,
        intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_hidden_layers,
        num_attention_heads=llm.num_attention_heads,
        num_key_value_heads=llm.num_key_value_heads,
        max_position_embeddings=llm.max_position_embeddings,
    )


def micro_config(**overrides) -> MFRSVLMConfig:
    """32-px / patch-4 tower (64 visual tokens, 3 blocks), 4-layer decoder, injection before layers [2, 4]."""
    values = dict(vision=MICRO_VISION, llm=micro_llm(), global_layer=3, injection_layers=(2, 4))
    values.update(overrides)
    return MFRSVLMConfig(**values)


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random: norms around 1, the rest N(0, 0.15²); residual scales kept as configured."""
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        if name.endswith("residual_scale"):
            continue
        noise = torch.randn(parameter.shape, generator=generator)
        if parameter.ndim == 1 and name.endswith("weight"):  # LayerNorm / RMSNorm gains
            parameter.copy_(1.0 + 0.1 * noise)
        else:
            parameter.copy_(0.15 * noise)


def make_model(seed: int = 0, **overrides) -> MFRSVLM:
    torch.manual_seed(seed)
    model = MFRSVLM(micro_config(**overrides))
    randomize(model, seed)
    return model.eval()


def released_injector_keys(rank: int, dim: int) -> dict[str, tuple[int, ...]]:
    """The released layout's per-rank injector keys and shapes."""
    keys: dict[str, tuple[int, ...]] = {}
    for part in ("deepstack_hidden_norms", "deepstack_detail_norms"):
        keys[f"model.{part}.{rank}.weight"] = (dim,)
        keys[f"model.{part}.{rank}.bias"] = (dim,)
    keys[f"model.deepstack_detail_proj.{rank}.weight"] = (dim, dim)
    keys[f"model.deepstack_detail_proj.{rank}.bias"] = (dim,)
    keys[f"model.deepstack_gate_proj.{rank}.weight"] = (dim, 2 * dim)
    keys[f"model.deepstack_gate_proj.{rank}.bias"] = (dim,)
    for part in ("deepstack_router_query", "deepstack_router_key"):
        keys[f"model.{part}.{rank}.0.weight"] = (dim,)
        keys[f"model.{part}.{rank}.0.bias"] = (dim,)
        keys[f"model.{part}.{rank}.1.weight"] = (dim, dim)
        keys[f"model.{part}.{rank}.1.bias"] = (dim,)
    return keys


def _write_two_shards(tensors: dict[str, torch.Tensor], folder: Path) -> None:
    keys = list(tensors)
    half = len(keys) // 2
    weight_map = {}
    for number, chunk in enumerate((keys[:half], keys[half:]), start=1):
        name = f"model-{number:05d}-of-00002.safetensors"
        save_file({key: tensors[key].contiguous() for key in chunk}, str(folder / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in chunk})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )


def write_released_checkpoint(
    folder: str | Path,
    *,
    seed: int = 0,
    model_type: str = "mfrsvlm",
    injection_layers: tuple[int, ...] = (2, 4),
    window_scales: tuple[float, ...] = (0.5, 1.0),
    drop_keys: tuple[str, ...] = (),
    extra_tensors: dict[str, torch.Tensor] | None = None,
    reshape: dict[str, tuple[int, ...]] | None = None,
    main_dtype: torch.dtype = torch.float32,
    llm_overrides: dict | None = None,
) -> tuple[Path, dict[str, torch.Tensor]]:
    """Write a micro checkpoint in the released MF-RSVLM layout; return the folder and the main-shard tensors
    (stored in ``main_dtype``; the tower's ``pytorch_model.bin`` stays float32, as mixed releases do).
    ``llm_overrides``: decoder fields changed from `micro_llm`'s."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    llm = micro_llm(**(llm_overrides or {}))
    hf = micro_hf_llama(seed, **(llm_overrides or {}))
    config = hf.config.to_dict()
    config.update(
        {
            "model_type": model_type,
            "architectures": ["MFRSVLMLlamaForCausalLM"],
            "mm_vision_tower": "openai/clip-vit-large-patch14-336",
            "mm_vision_select_layer": [MICRO_VISION.num_hidden_layers],
            "mm_projector_type": "mlp2x_gelu",
            "mm_hidden_size": MICRO_VISION.hidden_size,
            "deepstack_injection_layers": list(injection_layers),
            "deepstack_detail_layers": [0.33, 0.66, 1.0],
            "deepstack_window_scales": list(window_scales),
            "deepstack_downsample_factor": 2,
            "image_aspect_ratio": "pad",
        }
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    generator = torch.Generator().manual_seed(seed + 1)
    tensors = {key: value.detach().clone() for key, value in hf.state_dict().items()}
    dim, vision_dim = llm.hidden_size, MICRO_VISION.hidden_size
    shapes = {
        "model.mm_projector.0.weight": (dim, vision_dim),
        "model.mm_projector.0.bias": (dim,),
        "model.mm_projector.2.weight": (dim, dim),
        "model.mm_projector.2.bias": (dim,),
    }
    for rank in range(len(injection_layers)):
        shapes.update(released_injector_keys(rank, dim))
    for key, shape in shapes.items():
        tensors[key] = 0.15 * torch.randn(shape, generator=generator)
        if key.endswith(".weight") and len(shape) == 1:
            tensors[key] = 1.0 + tensors[key]
    tensors["model.deepstack_residual_scale"] = torch.linspace(0.5, 1.5, len(injection_layers))
    for key, shape in (reshape or {}).items():
        tensors[key] = torch.zeros(shape)
    for key in drop_keys:
        del tensors[key]
    tensors.update(extra_tensors or {})
    tensors = {key: value.to(main_dtype) for key, value in tensors.items()}
    _write_two_shards(tensors, folder)
    write_hf_clip_vision(folder / "vision_tower", seed=seed + 2, config=MICRO_VISION, file_format="bin")
    shutil.copyfile(tiny_tokenizer_dir() / "tokenizer.model", folder / "tokenizer.model")
    return folder, tensors


def write_llava_folder(folder: str | Path, *, seed: int = 0) -> tuple[Path, dict[str, torch.Tensor]]:
    """A micro LLaVA-1.5 folder: HF Llama weights + ``model.mm_projector.{0,2}.*``, LLaVA config fields."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    llm = micro_llm()
    hf = micro_hf_llama(seed)
    config = hf.config.to_dict()
    config.update(
        {
            "model_type": "llava_llama",
            "architectures": ["LlavaLlamaForCausalLM"],
            "mm_vision_tower": "openai/clip-vit-large-patch14-336",
            "mm_vision_select_layer": -2,
            "mm_projector_type": "mlp2x_gelu",
            "mm_hidden_size": MICRO_VISION.hidden_size,
        }
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    generator = torch.Generator().manual_seed(seed + 3)
    tensors = {key: value.detach().clone() for key, value in hf.state_dict().items()}
    dim = llm.hidden_size
    tensors["model.mm_projector.0.weight"] = 0.15 * torch.randn(dim, MICRO_VISION.hidden_size, generator=generator)
    tensors["model.mm_projector.0.bias"] = 0.15 * torch.randn(dim, generator=generator)
    tensors["model.mm_projector.2.weight"] = 0.15 * torch.randn(dim, dim, generator=generator)
    tensors["model.mm_projector.2.bias"] = 0.15 * torch.randn(dim, generator=generator)
    _write_two_shards(tensors, folder)
    shutil.copyfile(tiny_tokenizer_dir() / "tokenizer.model", folder / "tokenizer.model")
    return folder, tensors


class TowerCounter:
    """Counts ``forward_intermediates`` calls and the images they encode."""

    def __init__(self, model: MFRSVLM) -> None:  # wraps model.vision_tower.forward_intermediates
        self.calls = 0
        self.images = 0
        original = model.vision_tower.forward_intermediates

        def counted(pixels, *args, **kwargs):
            self.calls += 1
            self.images += pixels.shape[0]
            return original(pixels, *args, **kwargs)

        model.vision_tower.forward_intermediates = counted


def write_study_folder(root: Path) -> Path:
    """What the study CLIs read: a 40-image synthetic benchmark in ``root/data`` (112 px) and ``make_model(seed=5)``
    with the tiny tokenizer in ``root/model``."""
    generate(root / "data", n_images=40, seed=0, size=112, workers=1)
    make_model(seed=5).save_pretrained(root / "model", tokenizer=tiny_tokenizer_dir())
    return root
