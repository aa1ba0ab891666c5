"""``rsfuse info``: per-part parameters and device bytes from the config alone (meta device), equal to the bytes a
quantized load really holds, and the MF-RSVLM-7B goals."""

import json

import pytest
import torch

from factories.console import one_line, run_rsfuse
from factories.hub_cache import add_to_hub_cache
from factories.mfrsvlm import make_model, micro_llm, write_released_checkpoint
from factories.tokenizer import tiny_tokenizer_dir
from rsfuse import MFRSVLM, MFRSVLMConfig
from rsfuse.checkpoints import io as checkpoint_io
from rsfuse.model.footprint import footprint, measured_bytes
from rsfuse.model.info import main as info_main


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    model = make_model(seed=3, llm=micro_llm(hidden_size=64, intermediate_size=128))
    return model.save_pretrained(tmp_path_factory.mktemp("info") / "model", tokenizer=tiny_tokenizer_dir())


@pytest.mark.parametrize("scheme", [None, "int8", "nf4"])
def test_computed_bytes_equal_what_a_load_holds(folder, scheme):
    model = MFRSVLM.from_pretrained(folder, quantization=scheme)
    computed = {row.part: row.device_bytes for row in footprint(model.config, scheme=scheme, dtype=torch.float32)}
    assert computed == measured_bytes(model)
    assert sum(row.parameters for row in footprint(model.config, scheme=scheme, dtype=torch.float32)) == sum(
        parameter.numel() for parameter in MFRSVLM.from_pretrained(folder).parameters())


def test_mf_rsvlm_7b_fits_the_goals():
    config = MFRSVLMConfig.paper()
    total = {scheme: sum(row.device_bytes for row in footprint(config, scheme=scheme, dtype=torch.bfloat16))
             for scheme in (None, "int8", "nf4")}
    assert 14.5e9 < total[None] < 15.5e9
    assert total["int8"] <= 8.5e9 and total["nf4"] <= 5.5e9


def test_info_reads_no_weight_and_takes_hub_ids(folder, tmp_path, monkeypatch, capsys):
    add_to_hub_cache(tmp_path / "cache", "org/released", write_released_checkpoint(tmp_path / "released")[0])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(checkpoint_io, "load_weights_file", lambda *a, **k: pytest.fail("a weight file was read"))
    assert info_main(["--model", "org/released", "--quantization", "nf4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"].startswith("org/released@") and report["quantization"] == "nf4"
    parts = {row["part"]: row for row in report["parts"]}
    assert parts["decoder_layers"]["device_bytes"] < parts["decoder_layers"]["full_bytes"]  # code tables weigh on 32-wide layers
    assert parts["vision_tower"]["device_bytes"] == parts["vision_tower"]["full_bytes"]
    assert info_main(["--model", str(folder)]) == 0
    table = capsys.readouterr().out
    assert "decoder_layers" in table and "total" in table and "GB = 1e9 bytes" in table


def test_info_cli_bad_input_is_one_line_exit_2(tmp_path):
    done = run_rsfuse("info", "--model", str(tmp_path / "missing"))
    assert done.returncode == 2 and "no such folder" in one_line(done.stderr)
    done = run_rsfuse("info", "--preset", "paper", "--quantization", "int8")
    assert done.returncode == 0 and "8.3" in done.stdout.splitlines()[-1]
