"""Hub repository ids as model sources, read from a real Hub cache on disk (the Hub's own layout) with the network
off (``HF_HUB_OFFLINE=1`` / ``local_files_only``): every layout rsfuse reads, revisions, the processor, from_parts,
the CLI, and the one-line errors."""

import json
import shutil

import pytest
import torch

from factories.clip import write_hf_clip_vision
from factories.console import one_line, run_rsfuse
from factories.hub_cache import add_to_hub_cache, commit_hash
from factories.llava_hf import write_hf_llava
from factories.mfrsvlm import MICRO_VISION, make_model, write_llava_folder, write_released_checkpoint
from factories.tokenizer import tiny_tokenizer_dir
from factories.train_run import child_env
from rsfuse import MFRSVLM, MFRSVLMProcessor
from rsfuse.checkpoints.hub import looks_like_repo_id, resolve_model
from rsfuse.checkpoints.io import CheckpointError


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A cache holding ``org/rsfuse`` (main + a ``v2`` branch of other weights), ``org/released`` (MF-RSVLM layout),
    ``org/llava-hf``, ``org/clip`` and ``org/llava`` (parts); returns (cache, the local folders)."""
    root = tmp_path_factory.mktemp("hub")
    cache = root / "cache"
    folders = {
        "rsfuse": make_model(seed=1).save_pretrained(root / "rsfuse", tokenizer=tiny_tokenizer_dir()),
        "rsfuse_v2": make_model(seed=2).save_pretrained(root / "rsfuse_v2", tokenizer=tiny_tokenizer_dir()),
        "released": write_released_checkpoint(root / "released", seed=3)[0],
        "llava-hf": write_hf_llava(root / "llava-hf", seed=3)[0],
        "clip": write_hf_clip_vision(root / "clip", seed=5, config=MICRO_VISION),
        "llava": write_llava_folder(root / "llava")[0],
    }
    shutil.copyfile(tiny_tokenizer_dir() / "tokenizer.model", folders["llava-hf"] / "tokenizer.model")
    for name in ("rsfuse", "released", "llava-hf", "clip", "llava"):
        add_to_hub_cache(cache, f"org/{name}", folders[name])
    add_to_hub_cache(cache, "org/rsfuse", folders["rsfuse_v2"], revision="v2")
    return cache, folders


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _same_weights(a: MFRSVLM, b: MFRSVLM) -> None:
    left, right = a.state_dict(), b.state_dict()
    assert sorted(left) == sorted(right)
    for key, value in left.items():
        assert torch.equal(value, right[key]), key


@pytest.mark.parametrize("layout", ["rsfuse", "released", "llava-hf"])
def test_every_layout_loads_from_the_hub_cache_like_its_folder(hub, offline, layout):
    cache, folders = hub
    model = MFRSVLM.from_pretrained(f"org/{layout}", cache_dir=cache)
    _same_weights(model, MFRSVLM.from_pretrained(folders[layout]))
    assert model.source.repo_id == f"org/{layout}" and model.source.revision == commit_hash(f"org/{layout}@main")
    assert model.source.path.parent.parent.name == f"models--org--{layout}"
    processor = MFRSVLMProcessor.from_pretrained(f"org/{layout}", cache_dir=cache)
    assert processor.settings() == MFRSVLMProcessor.from_pretrained(folders[layout]).settings()


def test_revision_picks_the_branch_and_local_files_only_needs_no_environment(hub, monkeypatch):
    cache, folders = hub
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    main = MFRSVLM.from_pretrained("org/rsfuse", cache_dir=cache, local_files_only=True)
    v2 = MFRSVLM.from_pretrained("org/rsfuse", revision="v2", cache_dir=cache, local_files_only=True)
    _same_weights(v2, MFRSVLM.from_pretrained(folders["rsfuse_v2"]))
    assert not torch.equal(main.projector[0].weight, v2.projector[0].weight)
    assert v2.source.revision == commit_hash("org/rsfuse@v2")
    with pytest.raises(CheckpointError) as error:
        MFRSVLM.from_pretrained("org/rsfuse", revision="v3", cache_dir=cache, local_files_only=True)
    assert "org/rsfuse@v3" in str(error.value) and str(cache) in str(error.value)


def test_from_parts_takes_hub_ids(hub, offline):
    cache, folders = hub
    model = MFRSVLM.from_parts(vision="org/clip", llava="org/llava", injection_layers=[4], cache_dir=cache)
    local = MFRSVLM.from_parts(vision=folders["clip"], llava=folders["llava"], injection_layers=[4])
    for key, value in model.state_dict().items():
        if not key.startswith("injectors."):  # new modules start random
            assert torch.equal(value, local.state_dict()[key]), key


def test_a_folder_that_exists_wins_over_an_id(hub, offline, tmp_path, monkeypatch):
    cache, folders = hub
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    make_model(seed=4).save_pretrained(tmp_path / "org" / "rsfuse", tokenizer=tiny_tokenizer_dir())
    model = MFRSVLM.from_pretrained("org/rsfuse", cache_dir=cache)
    assert model.source.repo_id is None
    _same_weights(model, MFRSVLM.from_pretrained(tmp_path / "org" / "rsfuse"))


@pytest.mark.parametrize(
    "name, message",
    [
        ("org/absent", "org/absent@main: not in the Hub cache"),
        ("/no/such/folder", "no such folder"),
        ("./relative/missing", "no such folder"),
    ],
)
def test_unreachable_ids_are_one_line_naming_the_id_and_what_to_do(hub, offline, name, message):
    cache, _ = hub
    with pytest.raises(CheckpointError) as error:
        MFRSVLM.from_pretrained(name, cache_dir=cache)
    text = str(error.value)
    assert message in text and "\n" not in text
    if name.startswith("org/"):
        assert str(cache) in text and "hf download org/absent" in text


def test_revision_on_a_folder_is_refused(hub):
    _, folders = hub
    with pytest.raises(CheckpointError, match="revision='v2' applies to Hub repository ids"):
        resolve_model(folders["rsfuse"], revision="v2")


def test_repo_id_spelling():
    assert looks_like_repo_id("FelixKAI/mfrsvlm-7b_sft") and looks_like_repo_id("org/name.v1")
    for text in ("name", "a/b/c", "/abs/path", "./x/y", "../x", "org/../x", "org/name.git", ""):
        assert not looks_like_repo_id(text), text


@pytest.mark.slow
def test_predict_reads_a_hub_id_offline(hub, tmp_path):
    cache, _ = hub
    from factories.serve import scene_image

    image = tmp_path / "scene.png"
    scene_image(32).save(image)
    env = {**child_env(), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    done = run_rsfuse("predict", "--model", "org/rsfuse", "--image", str(image), "--question", "what?",
                      "--max-new-tokens", "3", "--device", "cpu", env=env)
    assert done.returncode == 0, done.stderr
    missing = run_rsfuse("predict", "--model", "org/absent", "--image", str(image), "--question", "what?",
                         "--device", "cpu", env=env)
    assert missing.returncode == 2
    assert "org/absent@main: not in the Hub cache" in one_line(missing.stderr)


def test_save_pretrained_writes_a_model_card_naming_the_source(hub, offline, tmp_path):
    cache, _ = hub
    model = MFRSVLM.from_pretrained("org/rsfuse", revision="v2", cache_dir=cache)
    folder = model.save_pretrained(tmp_path / "copy")
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: rsfuse")
    assert f"loaded from: org/rsfuse@{commit_hash('org/rsfuse@v2')}" in card
    assert "- `model.safetensors.index.json`" in card and "layers [2, 4]" in card
    _same_weights(MFRSVLM.from_pretrained(folder), model)


def test_eval_recipe_reads_a_hub_id_and_never_reuses_answers_across_revisions(hub, offline, tmp_path, monkeypatch,
                                                                                capsys):
    from huggingface_hub import constants

    from factories.eval_data import write_synthetic_benchmark
    from rsfuse.recipes import evaluate as recipe

    cache, _ = hub
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    data = write_synthetic_benchmark(tmp_path / "data")
    args = [f"data={data}", f"output_dir={tmp_path / 'out'}", "task=synthetic", "max_new_tokens=3", "progress=false"]
    assert recipe.main(["model=org/rsfuse", *args]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["model"] == f"org/rsfuse@{commit_hash('org/rsfuse@main')}"
    capsys.readouterr()
    assert recipe.main(["model=org/rsfuse", "revision=v2", *args]) == 2
    assert "hub_revision" in one_line(capsys.readouterr().err)
    assert recipe.main(["model=org/absent", *args]) == 2
    assert "org/absent@main: not in the Hub cache" in one_line(capsys.readouterr().err)
