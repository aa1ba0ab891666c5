"""Recipe configuration: defaults, YAML, key=value overrides, type checks, unknown keys."""

from pathlib import Path

import pytest
import yaml

from rsfuse.recipes.config import ConfigError, save_config, to_dict
from rsfuse.recipes.train_args import TrainRecipeConfig, load_config, parse_args
from rsfuse.train.setup import build_model_config

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"


def test_defaults_and_overrides_are_typed():
    config = parse_args(["train.lr=1e-4", "train.batch_size=3", "data.skip_bad=true", "train.vit_lr=null", "seed=5"])
    assert config.train.lr == 1e-4 and isinstance(config.train.lr, float)
    assert config.train.batch_size == 3 and config.data.skip_bad is True
    assert config.train.vit_lr is None and config.seed == 5
    assert parse_args(["train.lr=1"]).train.lr == 1.0  # an int where a float is expected


def test_unknown_key_is_named_with_suggestions():
    with pytest.raises(ConfigError, match=r"'train\.lrr'.*train\.lr"):
        parse_args(["train.lrr=1"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_args(["train.lr"])
    with pytest.raises(ConfigError, match="unknown option"):
        parse_args(["--lr", "1"])


@pytest.mark.parametrize(
    "item, message",
    [
        ("train.batch_size=two", "expected an integer"),
        ("train.batch_size=1.5", "expected an integer"),
        ("train.lr=fast", "expected a number"),
        ("data.skip_bad=maybe", "expected true/false"),
        ("train.trainable.llm=half", "not one of frozen, full, lora"),
        ("seed=null", "null is not allowed"),
    ],
)
def test_bad_values_name_the_key(item, message):
    with pytest.raises(ConfigError, match=message) as error:
        parse_args([item])
    assert item.split("=")[0] in str(error.value)


def test_yaml_then_command_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"train": {"lr": 0.5, "batch_size": 2}, "model": "paper", "data.json": "x.json"}))
    config = load_config(path, ["train.lr=0.25"])
    assert config.train.lr == 0.25 and config.train.batch_size == 2
    assert config.model.preset == "paper" and config.data.json == "x.json"
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"train\.epochz.*bad\.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_round_trip_through_yaml(tmp_path):
    config = parse_args(["model.llm.hidden_size=96", "train.lr=3e-3"])
    save_config(config, tmp_path / "saved.yaml")
    again = load_config(tmp_path / "saved.yaml")
    assert again == config and again.model.overrides == config.model.overrides


def test_default_yaml_is_the_embedded_default():
    tree = yaml.safe_load((CONFIGS / "default_tiny.yaml").read_text())
    assert tree == to_dict(TrainRecipeConfig())


@pytest.mark.parametrize("name", ["default_tiny", "stage1_pretrain_7b", "stage2_sft_7b", "llava_stage1_projector_7b"])
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    if name.startswith("stage"):
        assert config.train.lr == 2e-5 and config.train.warmup_ratio == 0.03
        assert config.train.weight_decay == 0.0 and config.train.epochs == 1
        assert config.data.max_length == 2048 and config.train.dtype == "bf16"
        assert config.train.gradient_checkpointing is True
        assert config.data.template == ("plain" if name.startswith("stage1") else "vicuna_v1")
    if name.startswith("llava"):
        assert config.train.lr == 1e-3 and config.train.trainable.projector == "full"
        assert {getattr(config.train.trainable, p) for p in ("vit", "injector", "llm")} == {"frozen"}


def test_model_overrides_are_checked_against_the_model_config():
    config = build_model_config(parse_args(["model.llm.hidden_size=96", "model.residual_scale_init=0"]), None)
    assert config.llm.hidden_size == 96 and config.residual_scale_init == 0.0
    with pytest.raises(ConfigError, match=r"'model\.llm\.hiden_size'"):
        build_model_config(parse_args(["model.llm.hiden_size=96"]), None)
    with pytest.raises(ConfigError, match=r"'model\.detail'.*true/false"):
        build_model_config(parse_args(["model.detail=3"]), None)
    with pytest.raises(ConfigError, match="unknown preset"):
        build_model_config(parse_args(["model=huge"]), None)


@pytest.mark.parametrize(
    "items, message",
    [
        (["train.cache_vision_features=true"], "needs train.trainable.vit=frozen"),
        (["train.feature_cache_dir=x"], "needs train.cache_vision_features=true"),
        (["model.vision_weights=tower", "model.init_from=run/final"], "cannot be combined"),
        (["model.quantization=nf4", "train.trainable.llm=lora"], "give model.init_from or model.vision_from"),
        (["model.quantization=int8", "model.init_from=run/final"], "cannot be trained in full; use train.trainable.llm=lora"),
        (["model.quantization=int3"], "quantization"),
    ],
)
def test_model_source_and_feature_cache_keys_are_checked_before_any_work(items, message):
    from rsfuse.train.setup import check_model_source_keys

    with pytest.raises(ConfigError, match=message):
        check_model_source_keys(parse_args(items))
    check_model_source_keys(parse_args(["train.trainable.vit=frozen", "train.cache_vision_features=true",
                                        "train.feature_cache_dir=x", "model.vision_weights=tower"]))


def test_own_data_json_turns_the_synthetic_val_and_test_files_off():
    own = parse_args(["data.json=mine/train.json", "data.image_root=mine"])
    assert own.data.val_json == "" and own.data.test_json == ""
    kept = parse_args(["data.json=mine/train.json", "data.val_json=mine/val.json"])
    assert kept.data.val_json == "mine/val.json" and kept.data.test_json == ""
    default = parse_args([])
    assert default.data.val_json == "data/synthetic/val.json" and default.data.test_json == "data/synthetic/test.json"


def test_help_is_generated_from_the_fields(capsys):
    assert parse_args(["--help"]) is None
    text = capsys.readouterr().out
    assert "train.batch_size" in text and "samples per micro-batch per process" in text and ">= 1" in text
    assert "none when data.json is given" in text and "model.<field>" in text


def test_model_overrides_are_typed_at_parse_time():
    config = parse_args(["model.window_scales=[1, 0.5]", "model.llm.hidden_size=96", "model=paper"])
    assert config.model.preset == "paper"
    assert config.model.overrides == {"window_scales": (1.0, 0.5), "llm.hidden_size": 96}
    with pytest.raises(ConfigError, match=r"'model\.llm\.hidden_size'.*integer"):
        parse_args(["model.llm.hidden_size=wide"])
