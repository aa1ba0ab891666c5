"""Bad model folders and generation limits through the public entry points (``MFRSVLM.from_pretrained``, the
``rsfuse`` commands that load a model): a wrongly typed ``config.json`` field, an integer or non-finite weight, a
missing folder, an unwritable destination, a huge ``max_new_tokens`` — each one line naming the file and key, exit 2.
The training-side cases are in test_bad_inputs.py; the table of cases is docs/RELIABILITY.md."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from factories.clip import write_hf_clip_vision
from factories.console import one_line, run_rsfuse
from factories.llama import write_hf_llama
from factories.llava_hf import write_hf_llava
from factories.mfrsvlm import MICRO_VISION, make_model, write_llava_folder, write_released_checkpoint
from factories.tokenizer import tiny_tokenizer_dir
from PIL import Image
from safetensors.torch import load_file, save_file

from rsfuse.checkpoints.io import CheckpointError
from rsfuse.cli import main as rsfuse_main
from rsfuse.model import MFRSVLM

# ---------------------------------------------------------------------------------------------- model config.json fields

@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """One micro checkpoint folder per layout rsfuse reads."""
    root = tmp_path_factory.mktemp("layouts")
    make_model(seed=0).save_pretrained(root / "rsfuse", tokenizer=tiny_tokenizer_dir())
    write_released_checkpoint(root / "released")
    write_llava_folder(root / "llava")
    write_hf_llava(root / "llava_hf")
    write_hf_llama(root / "llama", "single")
    write_hf_clip_vision(root / "clip", config=MICRO_VISION)
    return root


def _load(layout: str, folder: Path, layouts: dict | Path):
    """The public API that reads ``folder`` of ``layout`` (the CLIP tower and the Llama come from ``from_parts``)."""
    if layout in ("rsfuse", "released", "llava_hf"):
        return MFRSVLM.from_pretrained(folder)
    if layout == "llava":
        return MFRSVLM.from_parts(vision=layouts / "clip", llava=folder)
    if layout == "llama":
        return MFRSVLM.from_parts(vision=layouts / "clip", llm=folder, global_layer=3,
                                  injection_layers=[1])  # a valid config: the weights are read
    return MFRSVLM.from_parts(vision=folder, llava=layouts / "llava")


def _with_field(layouts: Path, layout: str, tmp_path: Path, file: str, key: str, value) -> tuple[Path, Path]:
    """A copy of the ``layout`` folder whose ``file`` has the dotted ``key`` set to ``value``."""
    folder = tmp_path / layout
    shutil.copytree(layouts / layout, folder)
    path = folder / file
    data = json.loads(path.read_text())
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    path.write_text(json.dumps(data))
    return folder, path


WRONG_FIELDS = [
    # (layout, file, key as it appears in the file, value)
    ("rsfuse", "config.json", "llm.hidden_size", "32"),
    ("rsfuse", "config.json", "llm.hidden_size", 32.0),
    ("rsfuse", "config.json", "llm.num_hidden_layers", [4]),
    ("rsfuse", "config.json", "llm.num_hidden_layers", True),
    ("rsfuse", "config.json", "llm.num_attention_heads", -4),
    ("rsfuse", "config.json", "llm.num_key_value_heads", 0),
    ("rsfuse", "config.json", "llm.head_dim", "8"),
    ("rsfuse", "config.json", "llm.vocab_size", "512"),
    ("rsfuse", "config.json", "llm.intermediate_size", 0),
    ("rsfuse", "config.json", "llm.max_position_embeddings", 256.5),
    ("rsfuse", "config.json", "llm.rms_norm_eps", "x"),
    ("rsfuse", "config.json", "llm.rope_theta", "big"),
    ("rsfuse", "config.json", "llm.initializer_range", "x"),
    ("rsfuse", "config.json", "llm.tie_word_embeddings", "no"),
    ("rsfuse", "config.json", "llm.attention_bias", 1),
    ("rsfuse", "config.json", "llm.bos_token_id", 1.5),
    ("rsfuse", "config.json", "llm.eos_token_id", "2"),
    ("rsfuse", "config.json", "llm.pad_token_id", [0]),
    ("rsfuse", "config.json", "llm.rope_parameters.factor", "2"),
    ("rsfuse", "config.json", "vision.hidden_size", "32"),
    ("rsfuse", "config.json", "vision.num_hidden_layers", [3]),
    ("rsfuse", "config.json", "vision.num_attention_heads", -2),
    ("rsfuse", "config.json", "vision.image_size", 32.0),
    ("rsfuse", "config.json", "vision.layer_norm_eps", "1e-5"),
    ("rsfuse", "config.json", "global_layer", "3"),
    ("rsfuse", "config.json", "detail_layers", "1,2"),
    ("rsfuse", "config.json", "window_scales", [True]),
    ("rsfuse", "config.json", "stack_factor", 2.0),
    ("rsfuse", "config.json", "injection_layers", 2),
    ("rsfuse", "config.json", "detail", "yes"),
    ("rsfuse", "config.json", "image_token_index", "-200"),
    ("rsfuse", "config.json", "residual_scale_init", "1"),
    ("released", "config.json", "hidden_size", "32"),
    ("released", "config.json", "num_hidden_layers", [4]),
    ("released", "config.json", "num_attention_heads", -4),
    ("released", "config.json", "vocab_size", 512.0),
    ("released", "config.json", "deepstack_detail_layers", ["a"]),
    ("released", "config.json", "deepstack_window_scales", ["x"]),
    ("released", "config.json", "deepstack_downsample_factor", "2"),
    ("released", "config.json", "deepstack_downsample_factor", 2.5),
    ("released", "config.json", "image_token_index", 3.5),
    ("released", "config.json", "mm_vision_select_layer", "3"),
    ("released", "vision_tower/config.json", "hidden_size", "32"),
    ("released", "vision_tower/config.json", "num_hidden_layers", True),
    ("released", "vision_tower/config.json", "num_attention_heads", -2),
    ("llama", "config.json", "hidden_size", 64.0),
    ("llama", "config.json", "num_attention_heads", -4),
    ("llava", "config.json", "num_hidden_layers", [4]),
    ("llava", "config.json", "mm_vision_select_layer", "x"),
    ("llava_hf", "config.json", "text_config.hidden_size", "32"),
    ("llava_hf", "config.json", "text_config.num_attention_heads", -4),
    ("llava_hf", "config.json", "vision_config.num_hidden_layers", False),
    ("llava_hf", "config.json", "tie_word_embeddings", "yes"),
    ("llava_hf", "config.json", "multimodal_projector_bias", "no"),
    ("clip", "config.json", "intermediate_size", "64"),
    ("clip", "config.json", "patch_size", -4),
]


@pytest.mark.parametrize("layout, file, key, value", WRONG_FIELDS, ids=lambda v: str(v))
def test_wrongly_typed_config_field_is_refused_naming_file_and_key(layouts, tmp_path, layout, file, key, value):
    folder, path = _with_field(layouts, layout, tmp_path, file, key, value)
    with pytest.raises(CheckpointError) as error:
        _load(layout, folder, layouts)
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message and f"'{key}'" in message, message


INTEGER_WEIGHTS = [
    # (layout, weights file, stored key)
    ("rsfuse", "model-00001-of-00001.safetensors", "projector.0.bias"),
    ("released", "model-00001-of-00002.safetensors", None),  # the shard's first key
    ("released", "model-00002-of-00002.safetensors", "model.deepstack_residual_scale"),
    ("released", "vision_tower/pytorch_model.bin", "vision_model.post_layernorm.weight"),
    ("llama", "model.safetensors", "model.norm.weight"),
    ("llava", "model-00002-of-00002.safetensors", "model.mm_projector.2.weight"),
    ("llava_hf", "model.safetensors", None),
    ("clip", "model.safetensors", "vision_model.embeddings.class_embedding"),
]


@pytest.mark.parametrize("layout, file, key", INTEGER_WEIGHTS)
def test_integer_weight_is_refused_naming_file_and_key(layouts, tmp_path, layout, file, key):
    folder = tmp_path / layout
    shutil.copytree(layouts / layout, folder)
    path = folder / file
    if path.suffix == ".bin":
        tensors = torch.load(path, weights_only=True)
    else:
        tensors = load_file(str(path))
    key = key or sorted(tensors)[0]
    assert tensors[key].is_floating_point()
    tensors[key] = tensors[key].round().to(torch.int64)
    if path.suffix == ".bin":
        torch.save(tensors, path)
    else:
        save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as error:
        _load(layout, folder, layouts)
    message = str(error.value)
    assert str(path) in message and repr(key) in message and "int64" in message, message


# ---------------------------------------------------------------------------------------------- the CLI's other commands


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


def _command(command: str, model: Path, image: Path, tmp_path: Path) -> list[str]:
    if command == "predict":
        return ["predict", "--model", str(model), "--image", str(image), "--question", "What is it?", "--device", "cpu",
                "--max-new-tokens", "4"]
    if command == "viz":
        return ["viz", "--model", str(model), "--image", str(image), "--question", "What is it?",
                "--out", str(tmp_path / "viz.png")]
    if command == "convert":
        return ["convert", str(model), str(tmp_path / "converted")]
    records = [{"id": "r0", "image": image.name, "question_type": "count", "answer": "3",
                "conversations": [{"from": "human", "value": "<image>\nHow many?"}, {"from": "gpt", "value": "3"}]}]
    (image.parent / "bench.json").write_text(json.dumps(records))
    return ["eval", f"model={model}", "task=synthetic", f"data={image.parent / 'bench.json'}",
            f"output_dir={tmp_path / 'eval'}"]


@pytest.mark.parametrize("command", ["predict", "convert", "viz", "eval"])
def test_cli_model_with_a_wrongly_typed_config_field_is_one_line_exit_2(layouts, image, tmp_path, capsys, command):
    folder, path = _with_field(layouts, "rsfuse", tmp_path, "config.json", "llm.num_attention_heads", -4)
    assert rsfuse_main(_command(command, folder, image, tmp_path)) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"rsfuse {command}: ") and str(path) in line and "'llm.num_attention_heads'" in line


@pytest.mark.parametrize("command", ["predict", "convert", "viz", "eval"])
def test_cli_model_with_an_integer_weight_is_one_line_exit_2(layouts, image, tmp_path, capsys, command):
    folder = tmp_path / "rsfuse"
    shutil.copytree(layouts / "rsfuse", folder)
    path = folder / "model-00001-of-00001.safetensors"
    tensors = load_file(str(path))
    tensors["projector.0.weight"] = tensors["projector.0.weight"].to(torch.int32)
    save_file(tensors, str(path))
    assert rsfuse_main(_command(command, folder, image, tmp_path)) == 2
    line = one_line(capsys.readouterr().err)
    assert str(path) in line and "'projector.0.weight'" in line


@pytest.mark.parametrize("command", ["predict", "convert"])
def test_cli_missing_model_is_one_line_exit_2_and_debug_shows_the_traceback(tmp_path, image, capsys, monkeypatch,
                                                                            command):
    argv = _command(command, tmp_path / "nowhere", image, tmp_path)
    assert rsfuse_main(argv) == 2
    assert "nowhere" in one_line(capsys.readouterr().err)
    assert rsfuse_main(["--debug", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "nowhere" in err.strip().splitlines()[-1]
    monkeypatch.setenv("RSFUSE_DEBUG", "1")
    assert rsfuse_main(argv) == 2
    assert "Traceback" in capsys.readouterr().err


def test_convert_main_exits_2_withone_line(tmp_path, capsys):
    from rsfuse.model.convert import main as convert_main

    assert convert_main([str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "nowhere" in one_line(capsys.readouterr().err)


# ---------------------------------------------------------------------------------------------- generation limits


def test_predict_huge_max_new_tokens_is_refused_inone_line(layouts, image):
    result = run_rsfuse("predict", "--model", str(layouts / "rsfuse"), "--image", str(image), "--question", "What is it?",
                     "--device", "cpu", "--max-new-tokens", "1000000000")
    assert result.returncode == 2, result.stderr[-2000:]
    line = one_line(result.stderr)
    assert "max_new_tokens 1000000000" in line and "max_position_embeddings = 256" in line


@pytest.fixture(scope="module")
def nan_model(layouts, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("nan") / "rsfuse"
    shutil.copytree(layouts / "rsfuse", folder)
    path = folder / "model-00001-of-00001.safetensors"
    tensors = load_file(str(path))
    tensors["llm.model.norm.weight"][3] = float("nan")
    save_file(tensors, str(path))
    return folder


def test_nan_weights_are_refused_at_load_naming_the_key(nan_model, image, capsys):
    with pytest.raises(CheckpointError, match=r"non-finite .*'llm\.model\.norm\.weight' \(1 of 32 values\)"):
        MFRSVLM.from_pretrained(nan_model)
    assert rsfuse_main(_command("predict", nan_model, image, nan_model)) == 2
    assert "'llm.model.norm.weight'" in one_line(capsys.readouterr().err)


def test_nan_weights_loaded_anyway_give_a_non_finite_logits_error(nan_model, image, capsys, monkeypatch):
    from rsfuse.model.predict import answer
    from rsfuse.processor import MFRSVLMProcessor

    model = MFRSVLM.from_pretrained(nan_model, check_finite=False)
    processor = MFRSVLMProcessor.from_pretrained(nan_model)
    with pytest.raises(ValueError, match="non-finite logits"):
        answer(model, processor.tokenizer, image, "What is it?", processor=processor, max_new_tokens=4)
    import rsfuse.checkpoints.io as io

    monkeypatch.setattr(io, "check_finite_tensors", lambda *args, **kwargs: None)  # as if check_finite=False
    assert rsfuse_main(_command("predict", nan_model, image, nan_model)) == 2
    assert "non-finite logits" in one_line(capsys.readouterr().err)


def test_cli_unwritable_destination_is_one_line_naming_it(layouts, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert rsfuse_main(["convert", str(layouts / "rsfuse"), str(blocker)]) == 2
    assert str(blocker) in one_line(capsys.readouterr().err)
