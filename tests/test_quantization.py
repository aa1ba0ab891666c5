"""Low-memory weights (``from_pretrained(..., quantization=...)``): the table of schemes, what stays full precision,
greedy agreement with full precision, loading that quantizes shard by shard, and the one-line refusals."""

import gc
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from factories.console import one_line, run_rsfuse
from factories.mfrsvlm import make_model, micro_llm
from factories.tokenizer import tiny_tokenizer_dir
from rsfuse import MFRSVLM
from rsfuse.checkpoints import io as checkpoint_io
from rsfuse.model import quantization
from rsfuse.model.quantization import NF4_BLOCKSIZE, QuantizationError, decoder_linear_names

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A 64-wide micro model in several shards (so loading streams)."""
    model = make_model(seed=3, llm=micro_llm(hidden_size=64, intermediate_size=128))
    return model.save_pretrained(tmp_path_factory.mktemp("quant") / "model", tokenizer=tiny_tokenizer_dir(),
                                 max_shard_bytes=150_000)


@pytest.fixture(scope="module")
def full(folder):
    return MFRSVLM.from_pretrained(folder)


def _inputs(batch: int = 6, length: int = 10):
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, 32, 32, generator=generator)
    ids = torch.randint(3, 500, (batch, length), generator=generator)
    ids[:, 0] = 1
    return pixels, ids


def _full_precision_parts_unchanged(model: MFRSVLM, full: MFRSVLM) -> None:
    quantized = set(decoder_linear_names(full))
    assert len(quantized) == 7 * full.config.llm.num_hidden_layers
    assert all(name.rsplit(".", 1)[1] in LINEARS for name in quantized)
    for name, module in full.named_modules():
        if isinstance(module, nn.Linear) and name not in quantized:  # tower, projector, routers, injectors, lm_head
            twin = model.get_submodule(name)
            assert type(twin) is nn.Linear and type(twin.weight) is nn.Parameter, name
            assert twin.weight.dtype == torch.float32 and torch.equal(twin.weight, module.weight), name
    assert torch.equal(model.llm.model.embed_tokens.weight, full.llm.model.embed_tokens.weight)


def test_int8_is_torchao_int8_weight_only_and_agrees_with_full_precision(folder, full):
    from torchao.quantization import Int8Tensor

    model = MFRSVLM.from_pretrained(folder, quantization="int8")
    assert model.quantization == "int8"
    for name in decoder_linear_names(full):
        weight = model.get_submodule(name).weight
        assert isinstance(weight, Int8Tensor) and weight.qdata.dtype == torch.int8, name
    _full_precision_parts_unchanged(model, full)
    pixels, ids = _inputs()
    with torch.no_grad():
        reference, logits = full(pixels, ids).logits, model(pixels, ids).logits
    agreement = (reference.argmax(-1) == logits.argmax(-1)).float().mean().item()
    assert agreement >= 0.95, agreement  # next-token argmax at every position, same prefix (near ties flip)
    assert (reference - logits).abs().max() < 0.05 * reference.abs().max()
    first = full.generate(pixels, ids, max_new_tokens=1)
    assert (model.generate(pixels, ids, max_new_tokens=1) == first).float().mean() >= 5 / 6


def test_nf4_is_bitsandbytes_nf4_double_quant_blocksize_64(folder, full):
    import bitsandbytes as bnb

    model = MFRSVLM.from_pretrained(folder, quantization="nf4")
    for name in decoder_linear_names(full):
        module = model.get_submodule(name)
        assert isinstance(module, bnb.nn.Linear4bit), name
        state = module.weight.quant_state
        assert (state.quant_type, state.blocksize, state.nested) == ("nf4", NF4_BLOCKSIZE, True), name
        assert module.weight.dtype == torch.uint8
        original = full.get_submodule(name).weight
        restored = bnb.functional.dequantize_4bit(module.weight.data, state)
        assert ((restored - original).norm() / original.norm()) < 0.12, name  # NF4's error on Gaussian weights
        x = torch.randn(3, original.shape[1], generator=torch.Generator().manual_seed(1))
        with torch.no_grad():  # bitsandbytes' CPU kernel may compute in bf16
            expected = x @ restored.T
            assert (module(x) - expected).norm() < 0.02 * expected.norm(), name
    _full_precision_parts_unchanged(model, full)
    pixels, ids = _inputs()
    assert model.generate(pixels, ids, max_new_tokens=4).shape == (6, 4)


@pytest.mark.parametrize(("shape", "chunk"), [((96, 200), 128), ((130, 96), 640), ((3, 5), 64), ((64, 64), 1 << 20),
                                             ((700, 1536), 64 * 999)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nf4_quantized_in_chunks_equals_bitsandbytes_in_one_call(shape, chunk, dtype):
    """The CPU path quantizes a weight ``chunk`` elements at a time (bounded temporaries): the stored bytes, block
    scales, double-quantization state and outputs equal bitsandbytes' own ``Params4bit`` quantizing it in one call."""
    import bitsandbytes as bnb

    generator = torch.Generator().manual_seed(sum(shape))
    linear = nn.Linear(shape[1], shape[0], dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(shape, generator=generator) * torch.rand(shape[0], 1, generator=generator))
    ours = quantization._nf4_linear(linear, dtype, chunk=chunk)
    theirs = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False, compress_statistics=True,
                               quant_type="nf4", blocksize=NF4_BLOCKSIZE).to("cpu")
    ours_state, theirs_state = ours.weight.quant_state, theirs.quant_state
    assert torch.equal(ours.weight.data, theirs.data)
    assert torch.equal(ours_state.absmax, theirs_state.absmax) and torch.equal(ours_state.offset, theirs_state.offset)
    assert torch.equal(ours_state.state2.absmax, theirs_state.state2.absmax)
    assert torch.equal(ours_state.state2.code, theirs_state.state2.code) and torch.equal(ours_state.code,
                                                                                      theirs_state.code)
    assert (ours_state.shape, ours_state.dtype, ours_state.nested) == (theirs_state.shape, dtype, True)
    x = torch.randn(2, shape[1], generator=generator, dtype=dtype)
    with torch.no_grad():
        expected = x @ bnb.functional.dequantize_4bit(theirs.data, theirs_state).T + linear.bias
        assert torch.allclose(ours(x), expected, rtol=2e-2, atol=2e-2)


def test_loading_quantizes_each_shard_before_reading_the_next(folder, monkeypatch):
    events: list[str] = []
    read, quantize = checkpoint_io.load_weights_file, quantization._quantize_one
    monkeypatch.setattr(checkpoint_io, "load_weights_file",
                        lambda path, **kw: (events.append(f"read {path.name}"), read(path, **kw))[1])
    monkeypatch.setattr(quantization, "_quantize_one",
                        lambda model, name, *a: (events.append(f"quantize {name}"), quantize(model, name, *a))[1])
    MFRSVLM.from_pretrained(folder, quantization="int8")
    reads = [index for index, event in enumerate(events) if event.startswith("read")]
    quantized = [index for index, event in enumerate(events) if event.startswith("quantize")]
    assert len(reads) >= 3 and len(quantized) == 28
    assert quantized[0] < reads[-1]  # layers of an early shard are quantized while later shards are unread
    assert all(any(read_at < at for read_at in reads) for at in quantized)


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads Linux's /proc/self/maps")
@pytest.mark.parametrize("scheme", ["int8", "nf4"])
def test_a_quantized_load_keeps_no_shard_file_mapped(folder, tmp_path, scheme, monkeypatch):
    """Weights the quantizer does not replace (norms, embeddings, the tower...) are copied out of the memory-mapped
    shards, so every shard is unmapped once read: peak memory near the quantized size plus one shard, not the whole
    checkpoint resident (bench/load_memory.py at 7B)."""
    copy = Path(shutil.copytree(folder, tmp_path / "model"))  # the module's other loads keep their own mappings

    def mapped() -> list[str]:
        gc.collect()
        return [line for line in Path("/proc/self/maps").read_text().splitlines() if str(copy) in line]

    before_each_read: list[list[str]] = []
    read = checkpoint_io.load_weights_file

    def recording_read(path, **kwargs):
        before_each_read.append(mapped())
        return read(path, **kwargs)

    monkeypatch.setattr(checkpoint_io, "load_weights_file", recording_read)
    model = MFRSVLM.from_pretrained(copy, quantization=scheme)
    assert len(before_each_read) >= 3 and model.quantization == scheme
    assert before_each_read == [[]] * len(before_each_read)  # no earlier shard is still mapped when the next is read
    assert mapped() == []


def test_from_parts_builds_on_meta_and_quantizes(tmp_path):
    from factories.clip import write_hf_clip_vision
    from factories.mfrsvlm import MICRO_VISION, write_llava_folder

    clip = write_hf_clip_vision(tmp_path / "clip", seed=5, config=MICRO_VISION)
    llava, raw = write_llava_folder(tmp_path / "llava")
    model = MFRSVLM.from_parts(vision=clip, llava=llava, injection_layers=[4], quantization="int8")
    assert model.quantization == "int8"
    assert type(model.llm.model.layers[0].mlp.up_proj.weight).__name__ == "Int8Tensor"
    assert torch.equal(model.projector[0].weight, raw["model.mm_projector.0.weight"])
    assert all(not parameter.is_meta for parameter in model.parameters())
    assert model.injectors["3"].residual_scale.dtype == torch.float32


def test_refusals_are_one_line(folder, full, tmp_path, monkeypatch):
    with pytest.raises(QuantizationError, match=r"quantization must be one of \('int8', 'int4', 'nf4'\), got 'int3'"):
        MFRSVLM.from_pretrained(folder, quantization="int3")
    with pytest.raises(QuantizationError, match="int4 weight-only kernels do not run here.*use quantization='nf4'"):
        MFRSVLM.from_pretrained(folder, quantization="int4", device="cpu")
    with pytest.raises(QuantizationError, match="runs on cpu or cuda devices, not meta"):
        MFRSVLM.from_pretrained(folder, quantization="int8", device="meta")
    quantized = MFRSVLM.from_pretrained(folder, quantization="int8")
    with pytest.raises(QuantizationError, match=r"save_pretrained: the decoder is quantized \(int8\)"):
        quantized.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(QuantizationError, match=r"needs the bitsandbytes package: pip install rsfuse\[quant\]"):
        MFRSVLM.from_pretrained(folder, quantization="nf4")


def test_an_already_quantized_checkpoint_is_refused(folder, tmp_path):
    import shutil

    copy = tmp_path / "prequantized"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(QuantizationError, match="already quantized \\(bitsandbytes\\); it cannot be quantized again"):
        MFRSVLM.from_pretrained(copy, quantization="nf4")
    with pytest.raises(QuantizationError, match="already quantized"):
        MFRSVLM.from_pretrained(copy)


def test_cli_refuses_int4_on_the_cpu_with_exit_2(folder, tmp_path):
    from factories.serve import scene_image

    image = tmp_path / "scene.png"
    scene_image(32).save(image)
    done = run_rsfuse("predict", "--model", str(folder), "--image", str(image), "--question", "what?",
                      "--device", "cpu", "--quantization", "int4")
    assert done.returncode == 2
    assert "use quantization='nf4'" in one_line(done.stderr)
    done = run_rsfuse("predict", "--model", str(folder), "--image", str(image), "--question", "what?",
                      "--device", "cpu", "--quantization", "int8", "--max-new-tokens", "2")
    assert done.returncode == 0, done.stderr


def test_quantize_model_in_memory_matches_quantized_loading(folder):
    from rsfuse.model.quantization import quantize_model

    loaded = MFRSVLM.from_pretrained(folder, quantization="int8")
    built = quantize_model(MFRSVLM.from_pretrained(folder), "int8")
    for name in decoder_linear_names(built):
        assert torch.equal(built.get_submodule(name).weight.qdata, loaded.get_submodule(name).weight.qdata), name
    with pytest.raises(QuantizationError, match=r"already quantized \(int8\)"):
        quantize_model(built, "nf4")
