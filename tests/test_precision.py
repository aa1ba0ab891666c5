"""Non-default precision and placement.

1. bf16 end to end on the CPU against fp32, same weights (a micro MF-RSVLM with deterministic random weights, loaded
   from one fp32 folder with ``dtype=None`` and ``dtype=torch.bfloat16``):

   * prefill logits: ``max |Δ| <= 0.05 · max |logits_fp32|`` and ``mean |Δ| <= 0.025 · std(logits_fp32)``.
     Why these bounds: bf16 keeps 8 significant bits, a unit roundoff of u = 2⁻⁹ ≈ 0.002. Every weight and every
     activation between the ~20 matrix products on the way to a logit (tower blocks, projector, router/injector,
     decoder layers, head) is rounded; such errors add up roughly like a random walk, to about u·sqrt(#roundings)
     ≈ 1% of the logits' scale. On this model the measured values are max |Δ| ≈ 2% of max |logits| and
     mean |Δ| ≈ 1.1% of their std: the bounds leave a factor ~2.5 for other CPUs' kernels, and are far below what an
     actual bug costs (a dropped injection, a wrong rotary angle or a lost KV entry moves the logits by O(std)).
   * greedy generation (KV cache): the bf16 tokens agree with the fp32 tokens at >= 90% of positions, and every bf16
     token is, under a full fp32 re-forward of the same prefix, either fp32's own argmax or within the logit tolerance
     of it (bf16 may only disagree at near-ties).

2. ``dtype=`` / ``device=`` of every loader, checked by value: each loaded tensor equals the file's tensor cast to
   that dtype (``Tensor.to(dtype)``: round to nearest even), lives on the CPU, and nothing is left on the meta
   device (buffers included; the rotary frequencies are recomputed by hand). Expected tensors are read from the files
   with safetensors / ``torch.load`` (or taken from the transformers model that wrote them) and mapped to rsfuse's
   names by hand.
"""

import math

import pytest
import torch
from safetensors.torch import load_file

from factories.clip import write_hf_clip_vision, write_openai_clip
from factories.llama import write_hf_llama
from factories.llava_hf import write_hf_llava
from factories.mfrsvlm import MICRO_VISION, make_model, micro_llm, write_llava_folder, write_released_checkpoint
from factories.tokenizer import tiny_tokenizer_dir
from rsfuse.encoders import CLIPVisionTower
from rsfuse.llm import LlamaForCausalLM
from rsfuse.model import MFRSVLM

LOW = [torch.bfloat16, torch.float16]
MAX_TOLERANCE = 0.05  # × max |fp32 logits|
MEAN_TOLERANCE = 0.025  # × std(fp32 logits)


# ----- helpers ----------------------------------------------------------------------------------------------------
def _files(folder) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors / .bin files directly in ``folder``, read without rsfuse."""
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    for path in sorted(folder.glob("*.bin")):
        tensors.update(torch.load(path, map_location="cpu", weights_only=True))
    return tensors


def _assert_all_on_cpu(module: torch.nn.Module) -> None:
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        assert not tensor.is_meta, f"{name} left on the meta device"
        assert tensor.device.type == "cpu", (name, tensor.device)


def _assert_values(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """``state`` holds exactly the keys of ``expected``, each equal to the expected tensor cast to ``dtype``."""
    assert sorted(state) == sorted(expected)
    for key, value in expected.items():
        target = value.to(dtype)
        assert state[key].dtype == dtype, (key, state[key].dtype)
        assert state[key].shape == target.shape, key
        assert torch.equal(state[key], target), key


def _model_state(model: MFRSVLM) -> dict[str, torch.Tensor]:
    """The model's state dict without the canvas' alias of the tower (stored once, as ``vision_tower.*``)."""
    return {key: value for key, value in model.state_dict().items() if not key.startswith("canvas.")}


def _assert_rotary(llm, head_dim: int, theta: float) -> None:
    """The decoder's rotary inverse frequencies (a non-persistent buffer) are real fp32 values: 1 / θ^(2i/d)."""
    buffers = {name: value for name, value in llm.named_buffers() if name.endswith("inv_freq")}
    assert buffers, "no rotary buffer found"
    expected = torch.tensor([1.0 / theta ** (2 * i / head_dim) for i in range(head_dim // 2)], dtype=torch.float64)
    for name, value in buffers.items():
        assert value.dtype == torch.float32 and not value.is_meta, name
        assert torch.allclose(value.double(), expected, rtol=1e-6, atol=0), name


def _clip_expected(folder) -> dict[str, torch.Tensor]:
    """HF CLIP vision file keys → tower keys (drop ``vision_model.``)."""
    return {key.removeprefix("vision_model."): value for key, value in _files(folder).items()}


# ----- 1. bf16 against fp32 ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fp32_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp32") / "model"
    make_model(seed=3).save_pretrained(folder, tokenizer=tiny_tokenizer_dir() / "tokenizer.model")
    return folder


@pytest.fixture(scope="module")
def pair(fp32_folder):
    fp32 = MFRSVLM.from_pretrained(fp32_folder).eval()
    bf16 = MFRSVLM.from_pretrained(fp32_folder, dtype=torch.bfloat16).eval()
    return fp32, bf16


def _inputs(batch: int = 3, length: int = 10, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 3, 32, 32, generator=generator)
    ids = torch.randint(3, 500, (batch, length), generator=generator)
    ids[:, 0] = 1
    return pixels, ids


@torch.no_grad()
def test_bf16_prefill_logits_match_fp32_within_the_stated_tolerance(pair):
    fp32, bf16 = pair
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    pixels, ids = _inputs()
    reference = fp32(pixels, ids).logits
    low = bf16(pixels.to(torch.bfloat16), ids).logits
    assert low.dtype == torch.bfloat16 and low.shape == reference.shape
    difference = (low.float() - reference).abs()
    assert difference.max() <= MAX_TOLERANCE * reference.abs().max(), difference.max()
    assert difference.mean() <= MEAN_TOLERANCE * reference.std(), difference.mean()
    # Not vacuous: bf16 really computed in bf16 (it differs from fp32), and the image matters at that precision.
    assert difference.max() > 0
    other = bf16(torch.roll(pixels, 1, dims=0).to(torch.bfloat16), ids).logits.float()
    assert (other - low.float()).abs().max() > 10 * MEAN_TOLERANCE * reference.std()


@torch.no_grad()
def test_bf16_greedy_generation_agrees_with_fp32(pair):
    fp32, bf16 = pair
    pixels, ids = _inputs(batch=4, seed=1)
    steps = 12
    tokens32 = fp32.generate(pixels, ids, max_new_tokens=steps, eos_token_id=[])
    tokens16 = bf16.generate(pixels.to(torch.bfloat16), ids, max_new_tokens=steps, eos_token_id=[])
    assert tokens16.shape == tokens32.shape == (4, steps)
    agreement = (tokens16 == tokens32).float().mean().item()
    assert agreement >= 0.9, (agreement, tokens32, tokens16)
    # Each bf16 token, given the bf16 prefix, judged by a full fp32 forward (no cache): fp32's argmax, or a near-tie.
    full = fp32(pixels, torch.cat([ids, tokens16], dim=1)).logits
    start = full.shape[1] - tokens16.shape[1] - 1  # the position whose logits choose the first new token
    chosen = full[:, start : start + steps]
    tolerance = MAX_TOLERANCE * chosen.abs().max()
    gap = chosen.max(dim=-1).values - chosen.gather(-1, tokens16[..., None]).squeeze(-1)
    assert (gap <= tolerance).all(), gap


# ----- 2. dtype= / device= of every loader, by value --------------------------------------------------------------
@pytest.mark.parametrize("dtype", LOW)
def test_mfrsvlm_from_pretrained_rsfuse_folder(fp32_folder, dtype):
    model = MFRSVLM.from_pretrained(fp32_folder, dtype=dtype, device="cpu")
    _assert_values(_model_state(model), _files(fp32_folder), dtype)
    _assert_all_on_cpu(model)
    llm = model.config.llm
    _assert_rotary(model.llm, llm.hidden_size // llm.num_attention_heads, llm.rope_theta)


_INJECTOR_PARTS = {
    "deepstack_hidden_norms": "hidden_norm",
    "deepstack_detail_norms": "detail_norm",
    "deepstack_detail_proj": "detail_proj",
    "deepstack_gate_proj": "gate_proj",
    "deepstack_router_query": "router.query",
    "deepstack_router_key": "router.key",
}


def _released_expected(folder, layers: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """The released layout's files under rsfuse names, by the design notes §3 (docs/DESIGN_NOTES.md; ``layers``: 0-based layer of rank 0, 1, ...)."""
    expected: dict[str, torch.Tensor] = {}
    for key, value in _files(folder).items():
        if key.startswith("model.mm_projector."):
            expected["projector." + key.removeprefix("model.mm_projector.")] = value
        elif key == "model.deepstack_residual_scale":
            for rank, layer in enumerate(layers):
                expected[f"injectors.{layer}.residual_scale"] = value[rank : rank + 1]
        elif key.startswith("model.deepstack_"):
            part, rank, rest = key.removeprefix("model.").split(".", 2)
            expected[f"injectors.{layers[int(rank)]}.{_INJECTOR_PARTS[part]}.{rest}"] = value
        else:
            expected["llm." + key] = value
    for key, value in _clip_expected(folder / "vision_tower").items():
        expected["vision_tower." + key] = value
    return expected


@pytest.mark.parametrize(
    "stored, dtype",
    [(torch.float32, torch.bfloat16), (torch.float32, torch.float16), (torch.bfloat16, torch.float32)],
    ids=["fp32-to-bf16", "fp32-to-fp16", "bf16-to-fp32"],
)
def test_mfrsvlm_from_pretrained_released_layout(tmp_path, stored, dtype):
    folder, _ = write_released_checkpoint(tmp_path / "released", main_dtype=stored, seed=6)
    model = MFRSVLM.from_pretrained(folder, dtype=dtype, device=torch.device("cpu"))
    _assert_values(_model_state(model), _released_expected(folder, (1, 3)), dtype)
    _assert_all_on_cpu(model)
    _assert_rotary(model.llm, 32 // 4, micro_llm().rope_theta)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return write_hf_clip_vision(tmp_path_factory.mktemp("clip") / "clip", seed=5, config=MICRO_VISION)


@pytest.mark.parametrize("dtype", LOW)
def test_mfrsvlm_from_parts_clip_plus_llama(tmp_path, clip_folder, dtype):
    llm = micro_llm()
    llama, hf = write_hf_llama(
        tmp_path / "llama", "sharded", vocab_size=llm.vocab_size, hidden_size=llm.hidden_size,
        intermediate_size=llm.intermediate_size, num_hidden_layers=llm.num_hidden_layers,
        num_attention_heads=llm.num_attention_heads, num_key_value_heads=llm.num_key_value_heads,
    )
    model = MFRSVLM.from_parts(vision=clip_folder, llm=llama, global_layer=3, injection_layers=[2, 4], dtype=dtype,
                               device="cpu")
    state = _model_state(model)
    expected = {"vision_tower." + key: value for key, value in _clip_expected(clip_folder).items()}
    expected.update({"llm." + key: value for key, value in hf.state_dict().items()})
    loaded = {key: value for key, value in state.items() if key.startswith(("vision_tower.", "llm."))}
    _assert_values(loaded, expected, dtype)
    # The newly initialised parts (projector, injectors) are in the asked dtype too.
    assert {value.dtype for value in state.values()} == {dtype}
    _assert_all_on_cpu(model)
    _assert_rotary(model.llm, llm.hidden_size // llm.num_attention_heads, llm.rope_theta)


@pytest.mark.parametrize("dtype", LOW)
def test_mfrsvlm_from_parts_clip_plus_liuhaotian_llava(tmp_path, clip_folder, dtype):
    llava, raw = write_llava_folder(tmp_path / "llava", seed=2)
    model = MFRSVLM.from_parts(vision=clip_folder, llava=llava, injection_layers=[4], dtype=dtype, device="cpu")
    state = _model_state(model)
    expected = {"vision_tower." + key: value for key, value in _clip_expected(clip_folder).items()}
    for key, value in _files(llava).items():
        if key.startswith("model.mm_projector."):
            expected["projector." + key.removeprefix("model.mm_projector.")] = value
        else:
            expected["llm." + key] = value
    loaded = {key: value for key, value in state.items() if not key.startswith("injectors.")}
    _assert_values(loaded, expected, dtype)
    assert {value.dtype for value in state.values()} == {dtype}
    _assert_all_on_cpu(model)


def _llava_hf_expected(hf) -> dict[str, torch.Tensor]:
    """transformers ``LlavaForConditionalGeneration`` (transformers 5 names) → rsfuse names, by hand."""
    expected: dict[str, torch.Tensor] = {}
    renames = [
        ("model.vision_tower.vision_model.", "vision_tower."),
        ("model.vision_tower.", "vision_tower."),
        ("vision_tower.vision_model.", "vision_tower."),
        ("model.multi_modal_projector.linear_1.", "projector.0."),
        ("model.multi_modal_projector.linear_2.", "projector.2."),
        ("multi_modal_projector.linear_1.", "projector.0."),
        ("multi_modal_projector.linear_2.", "projector.2."),
        ("model.language_model.", "llm.model."),
        ("language_model.model.", "llm.model."),
        ("language_model.lm_head.", "llm.lm_head."),
        ("lm_head.", "llm.lm_head."),
    ]
    for key, value in hf.state_dict().items():
        for old, new in renames:
            if key.startswith(old):
                expected[new + key.removeprefix(old)] = value.detach()
                break
        else:
            raise AssertionError(f"unmapped transformers key {key}")
    return expected


@pytest.mark.parametrize("dtype", LOW)
def test_mfrsvlm_from_parts_llava_hf_folder(tmp_path, dtype):
    folder, hf = write_hf_llava(tmp_path / "llava_hf", seed=4)
    model = MFRSVLM.from_parts(vision=None, llava=folder, dtype=dtype, device="cpu")
    _assert_values(_model_state(model), _llava_hf_expected(hf), dtype)
    _assert_all_on_cpu(model)
    text = hf.config.text_config
    _assert_rotary(model.llm, text.hidden_size // text.num_attention_heads, text.rope_parameters["rope_theta"]
                   if getattr(text, "rope_parameters", None) else text.rope_theta)


@pytest.mark.parametrize("dtype", LOW)
def test_clip_tower_from_pretrained_hf_folder(clip_folder, dtype):
    tower = CLIPVisionTower.from_pretrained(clip_folder, dtype=dtype, device="cpu")
    _assert_values(tower.state_dict(), _clip_expected(clip_folder), dtype)
    _assert_all_on_cpu(tower)


def _openai_expected(path) -> dict[str, torch.Tensor]:
    """OpenAI layout → HF-style tower keys by the design notes §3 (docs/DESIGN_NOTES.md; fused q/k/v split in three; ``visual.proj`` ignored)."""
    raw = {key.removeprefix("visual."): value for key, value in load_file(str(path)).items() if key.startswith("visual.")}
    expected = {
        "embeddings.patch_embedding.weight": raw.pop("conv1.weight"),
        "embeddings.class_embedding": raw.pop("class_embedding"),
        "embeddings.position_embedding.weight": raw.pop("positional_embedding"),
    }
    raw.pop("proj")
    names = {"ln_pre": "pre_layrnorm", "ln_post": "post_layernorm"}
    block = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for key, value in raw.items():
        stem, kind = key.rsplit(".", 1)
        if stem in names:
            expected[f"{names[stem]}.{kind}"] = value
            continue
        _, _, layer, rest = stem.split(".", 3)  # transformer.resblocks.{i}.{rest}
        prefix = f"encoder.layers.{layer}."
        if rest == "attn" and kind.startswith("in_proj_"):
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                expected[f"{prefix}self_attn.{name}_proj.{kind.removeprefix('in_proj_')}"] = part
        else:
            expected[f"{prefix}{block[rest]}.{kind}"] = value
    return expected


@pytest.mark.parametrize("dtype", LOW)
def test_clip_tower_from_pretrained_openai_file(tmp_path, dtype):
    path = write_openai_clip(tmp_path / "openai" / "ViT-micro.safetensors", seed=8, config=MICRO_VISION)
    tower = CLIPVisionTower.from_pretrained(path, dtype=dtype, device="cpu",
                                            num_attention_heads=MICRO_VISION.num_attention_heads)
    _assert_values(tower.state_dict(), _openai_expected(path), dtype)
    _assert_all_on_cpu(tower)


@pytest.mark.parametrize("dtype", LOW)
def test_llama_from_pretrained(tmp_path, dtype):
    folder, hf = write_hf_llama(tmp_path / "llama", "sharded", hidden_size=32)
    model = LlamaForCausalLM.from_pretrained(folder, dtype=dtype, device="cpu")
    expected = {key: value.detach() for key, value in hf.state_dict().items()}
    _assert_values(model.state_dict(), expected, dtype)
    _assert_all_on_cpu(model)
    config = hf.config
    theta = config.rope_parameters["rope_theta"] if getattr(config, "rope_parameters", None) else config.rope_theta
    _assert_rotary(model, config.hidden_size // config.num_attention_heads, theta)


def test_rounding_of_the_expected_values_is_not_the_identity():
    """The by-value checks above are only meaningful if casting really changes the numbers (bf16 and fp16 differ
    from fp32 and from each other on random values)."""
    values = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    bf16, fp16 = values.to(torch.bfloat16), values.to(torch.float16)
    assert not torch.equal(bf16.float(), values) and not torch.equal(fp16.float(), values)
    assert not torch.equal(bf16.float(), fp16.float())
    assert math.isclose((bf16.float() - values).abs().max().item(), 0.0, abs_tol=2 ** -8 * values.abs().max().item())
