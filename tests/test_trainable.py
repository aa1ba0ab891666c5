"""What the training recipe trains, checked on the weights it writes: ``train.trainable.<part>=frozen`` leaves every
tensor of that part bit-identical to the initial checkpoint and ``full`` moves it; and a short run on a learnable toy
task (the same answer for every sample) lowers the loss by a wide margin.

The recipe runs in a subprocess (``recipes/mf_rsvlm_train.py``) from ``model.init_from=<folder>``: a micro MF-RSVLM
with random weights written with ``save_pretrained``, so the initial weights are the files in that folder and the
comparison is between two sets of files, tensor by tensor, by value.
"""

import json
from pathlib import Path

import pytest
import torch
from factories.instructions import write_png, write_tiny_instructions
from factories.mfrsvlm import make_model
from factories.tokenizer import tiny_tokenizer_dir
from factories.train_run import run_recipe

from rsfuse.checkpoints.io import iter_weight_shards
from rsfuse.train.metrics import read_metrics


PARTS = {"vit": "vision_tower.", "projector": "projector.", "injector": "injectors.", "llm": "llm."}
# Parameters no loss reaches in the micro model, whatever is trainable: the tower's final LayerNorm (the model reads
# hidden states, never the pooled output). They are allowed to stay put in a "full" part.
UNUSED = ("vision_tower.post_layernorm.",)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for _, shard in iter_weight_shards(folder):
        weights.update(shard)
    return weights


def _part(name: str) -> str:
    matches = [part for part, prefix in PARTS.items() if name.startswith(prefix)]
    assert len(matches) == 1, f"{name} belongs to {matches}"
    return matches[0]


@pytest.fixture(scope="module")
def initial(tmp_path_factory) -> Path:
    """A micro model with every weight random (gradients reach every used parameter), saved as an rsfuse folder."""
    folder = tmp_path_factory.mktemp("initial")
    make_model(seed=11).save_pretrained(folder, tokenizer=tiny_tokenizer_dir() / "tokenizer.model")
    return folder


@pytest.fixture(scope="module")
def instructions(tmp_path_factory) -> tuple[Path, Path]:
    return write_tiny_instructions(tmp_path_factory.mktemp("instructions"))


def _args(output: Path, initial: Path, data: tuple[Path, Path], *extra: str) -> list[str]:
    json_path, image_root = data
    return [
        f"output_dir={output}",
        f"data.json={json_path}",
        f"data.image_root={image_root}",
        "data.val_json=",
        "data.test_json=",
        f"data.tokenizer={tiny_tokenizer_dir()}",
        "data.synthetic=false",
        "data.max_length=128",
        f"model.init_from={initial}",
        "seed=5",
        "save_every=0",
        "train.batch_size=4",
        "train.warmup_ratio=0",
        "train.val_every=0",
        "eval.after_train=false",
        "num_threads=1",
        *extra,
    ]


def _train(output: Path, initial: Path, data, *extra: str) -> Path:
    result = run_recipe(_args(output, initial, data, *extra), timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return output


# One run freezes vit + injector and trains projector + llm, the other the opposite: every part is frozen in one run
# and fully trained in the other.
SPLITS = [
    {"vit": "frozen", "projector": "full", "injector": "frozen", "llm": "full"},
    {"vit": "full", "projector": "frozen", "injector": "full", "llm": "frozen"},
]


@pytest.mark.parametrize("modes", SPLITS, ids=["vit+injector-frozen", "projector+llm-frozen"])
def test_frozen_parts_stay_bit_identical_and_full_parts_move(initial, instructions, tmp_path, modes):
    settings = [f"train.trainable.{part}={mode}" for part, mode in modes.items()]
    output = _train(tmp_path / "run", initial, instructions, "max_steps=3", "train.lr=1e-2", *settings)
    before, after = _weights(initial), _weights(output / "final")
    assert before.keys() == after.keys()
    moved = {part: [] for part in PARTS}
    still = {part: [] for part in PARTS}
    for name, tensor in before.items():
        part = _part(name)
        assert after[name].dtype == tensor.dtype and after[name].shape == tensor.shape, name
        (still if torch.equal(after[name], tensor) else moved)[part].append(name)
    for part, mode in modes.items():
        if mode == "frozen":
            assert not moved[part], f"{part} is frozen but these tensors changed: {moved[part]}"
        else:
            unexpected = [name for name in still[part] if not name.startswith(UNUSED)]
            assert not unexpected, f"{part} is trained in full but these tensors did not change: {unexpected}"
            assert moved[part], part
            # Not a rounding-level change: the part's weights moved by a visible amount.
            change = max((after[n] - before[n]).abs().max().item() for n in moved[part])
            assert change > 1e-3, (part, change)


def _toy_records(count: int) -> list[dict]:
    """``count`` samples, each an image and the same question with the same answer: a task one can memorise."""
    return [
        {
            "id": f"toy-{index}",
            "image": f"toy{index}.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is in the image?"},
                {"from": "gpt", "value": "An airport with three planes parked near the terminal."},
            ],
        }
        for index in range(count)
    ]


def test_short_run_lowers_the_loss_on_a_learnable_toy_task(initial, tmp_path):
    folder = tmp_path / "toy"
    records = _toy_records(8)
    for index, record in enumerate(records):
        write_png(folder / "images" / record["image"], 32, 32, (40 * index % 256, 120, 200 - 20 * index))
    (folder / "data.json").write_text(json.dumps(records))
    output = _train(tmp_path / "run", initial, (folder / "data.json", folder / "images"), "max_steps=16",
                    "train.lr=1e-2")
    losses = [record["loss"] for record in read_metrics(output / "metrics.jsonl") if "loss" in record]
    assert len(losses) == 16
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    # Every batch asks the same thing, so without working optimizer steps the loss would stay where it starts (about
    # ln(512) ~ 6.2 per token for a random decoder); a working run memorises the answer.
    assert first > 3.0, losses
    assert last < 0.4 * first, losses
    assert losses[-1] < losses[0], losses



@pytest.mark.slow
def test_qlora_on_nf4_writes_merged_full_precision_weights_and_resumes(initial, instructions, tmp_path):
    """``model.quantization=nf4`` + ``train.trainable.llm=lora`` on bitsandbytes' CPU backend: the step folder leaves the
    quantized base weights out, a resume continues, and ``final/`` holds plain float32 weights: the source's decoder
    with the LoRA deltas merged in, loadable without bitsandbytes."""
    from rsfuse import MFRSVLM

    modes = ["train.trainable.vit=frozen", "train.trainable.projector=frozen", "train.trainable.injector=frozen",
             "train.trainable.llm=lora", "train.lora.r=4", "model.quantization=nf4", "train.lr=5e-2"]
    output = _train(tmp_path / "run", initial, instructions, "max_steps=2", "save_every=1", *modes)
    step_files = sorted(output.glob("checkpoints/step_*/model.safetensors")) or sorted(output.rglob("model.safetensors"))
    assert step_files, sorted(str(path) for path in output.rglob("*"))
    saved = list(_weights_file(step_files[-1]))
    assert not [key for key in saved if key.startswith("llm.model.layers.") and ".base_layer.weight" in key]
    assert any("lora_A" in key for key in saved)
    resumed = run_recipe(_args(output, initial, instructions, "max_steps=3", "save_every=1", "resume=auto", *modes),
                         timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    before, after = _weights(initial), _weights(output / "final")
    assert before.keys() == after.keys() and all(tensor.dtype == torch.float32 for tensor in after.values())
    moved = [name for name in before if not torch.equal(before[name], after[name])]
    assert moved and all(_part(name) == "llm" and "layers." in name for name in moved), moved
    assert MFRSVLM.from_pretrained(output / "final").quantization is None


def _weights_file(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path))
