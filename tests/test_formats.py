"""``rsfuse.checkpoints.formats``: one registry of checkpoint formats (``model_type`` → reader), through which both
``MFRSVLM.from_pretrained`` and ``MFRSVLMProcessor.from_pretrained`` resolve a folder."""

import json

import pytest
from factories.llava_hf import write_hf_llava
from factories.mfrsvlm import make_model, write_llava_folder, write_released_checkpoint
from factories.tokenizer import tiny_tokenizer_dir

from rsfuse.checkpoints import CheckpointError, formats
from rsfuse.model import MFRSVLM, MFRSVLMConfig
from rsfuse.processor import MFRSVLMProcessor


def _errors(folder) -> tuple[str, str]:
    """The messages of the loader's and the processor's refusal of ``folder`` (both must refuse)."""
    with pytest.raises(CheckpointError) as loader:
        MFRSVLM.from_pretrained(folder)
    with pytest.raises(CheckpointError) as processor:
        MFRSVLMProcessor.from_pretrained(folder)
    return str(loader.value), str(processor.value)


def test_the_registry_lists_each_format_once():
    names = [checkpoint.name for checkpoint in formats.FORMATS]
    model_types = [model_type for checkpoint in formats.FORMATS for model_type in checkpoint.model_types]
    assert names == ["rsfuse", "released", "transformers"]
    assert model_types == ["rsfuse_mfrsvlm", "mfrsvlm", "vhm", "llava"]
    assert len(set(model_types)) == len(model_types) and formats.MODEL_TYPES == tuple(model_types)
    from rsfuse.model.loading import READABLE_MODEL_TYPES

    assert READABLE_MODEL_TYPES is formats.MODEL_TYPES


def test_an_unknown_model_type_gives_the_same_one_line_error_from_loader_and_processor(tmp_path):
    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    loader, processor = _errors(folder)
    assert loader == processor and "\n" not in loader
    assert loader.startswith(f"{folder / 'config.json'}: model_type 'llama' is not an MF-RSVLM checkpoint")
    for model_type in formats.MODEL_TYPES:
        assert repr(model_type) in loader
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    loader, processor = _errors(folder)
    expected = f"{folder / 'config.json'}: no 'model_type' string; cannot tell which checkpoint layout this is"
    assert loader == processor == expected


def test_liuhaotian_llava_folders_are_parts_for_from_parts(tmp_path):
    folder, _ = write_llava_folder(tmp_path / "llava")  # model_type "llava_llama": unknown to the registry
    loader, processor = _errors(folder)
    assert loader == processor and "'llava_llama' is not an MF-RSVLM checkpoint" in loader
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "llava"}))  # as some Hub copies say
    loader, processor = _errors(folder)
    assert loader == processor and "\n" not in loader
    assert "liuhaotian" in loader and "MFRSVLM.from_parts(vision=CLIP_DIR, llava=FOLDER)" in loader


def test_loader_and_processor_both_resolve_through_the_registry(tmp_path, monkeypatch):
    folder = make_model(0).save_pretrained(tmp_path / "rsfuse", tokenizer=tiny_tokenizer_dir())
    MFRSVLM.from_pretrained(folder)
    MFRSVLMProcessor.from_pretrained(folder)
    kept = {key: value for key, value in formats._BY_MODEL_TYPE.items() if key != "rsfuse_mfrsvlm"}
    monkeypatch.setattr(formats, "_BY_MODEL_TYPE", kept)  # the rsfuse format taken out of the registry
    loader, processor = _errors(folder)
    assert loader == processor and "model_type 'rsfuse_mfrsvlm' is not an MF-RSVLM checkpoint" in loader


@pytest.mark.parametrize("layout", ["rsfuse", "released", "transformers"])
def test_each_format_reads_the_loaded_models_config_from_config_files_alone(tmp_path, layout):
    if layout == "rsfuse":
        folder = make_model(0).save_pretrained(tmp_path / "m", tokenizer=tiny_tokenizer_dir())
    elif layout == "released":
        folder, _ = write_released_checkpoint(tmp_path / "m")
    else:
        folder, _ = write_hf_llava(tmp_path / "m", sparse_config=True)
    checkpoint = formats.checkpoint_format(folder)
    assert checkpoint.name == layout and checkpoint.reads_parts == (layout == "transformers")
    loaded = MFRSVLM.from_pretrained(folder)
    for shard in folder.glob("*.safetensors"):
        shard.write_bytes(b"not weights")  # the config readers must not read them
    assert MFRSVLMConfig.from_dict(formats.read_model_config(folder)).to_dict() == loaded.config.to_dict()
