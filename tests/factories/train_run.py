"""Tiny end-to-end training runs for the recipe tests: synthetic data, a tokenizer, a very small MF-RSVLM, and the
command line that trains it in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENTRY = REPO / "recipes" / "mf_rsvlm_train.py"

# A 56-px, 2-block tower (4x4 tokens), one window scale over the real 112-px image, a 2-layer 32-wide decoder.
TINY_MODEL = [
    "model.preset=tiny",
    "model.vision.image_size=56",
    "model.vision.num_hidden_layers=2",
    "model.vision.hidden_size=32",
    "model.vision.intermediate_size=64",
    "model.global_layer=2",
    "model.detail_layers=[1,2]",
    "model.window_scales=[1.0]",
    "model.canvas_source=image",
    "model.llm.num_hidden_layers=2",
    "model.llm.hidden_size=32",
    "model.llm.intermediate_size=64",
    "model.injection_layers=[2]",
]


def tiny_data(folder: Path) -> list[str]:
    """Write (once) a 12-image synthetic benchmark at 112 px and a tokenizer trained on it; returns the overrides."""
    from rsfuse.synthetic.benchmark import generate
    from rsfuse.llm.templates import build_prompt
    from rsfuse.llm.tokenizer import train_sentencepiece

    data = folder / "synthetic"
    generate(data, n_images=12, seed=3, size=112)
    tokenizer = folder / "tokenizer"
    if not (tokenizer / "tokenizer.model").is_file():
        records = json.loads((data / "train.json").read_text())
        texts = [turn["value"].replace("<image>", "").strip() for r in records for turn in r["conversations"]]
        texts += [build_prompt("vicuna_v1", "question", with_image=False)] * 20
        train_sentencepiece(texts, tokenizer, vocab_size=320)
    return [
        f"data.json={data / 'train.json'}",
        f"data.val_json={data / 'val.json'}",
        f"data.test_json={data / 'test.json'}",
        f"data.image_root={data}",
        f"data.tokenizer={tokenizer}",
        "data.synthetic=false",
        "data.max_length=256",
    ]


def recipe_args(output_dir: Path, data_overrides: list[str], *extra: str) -> list[str]:
    """Arguments of a small, fast run: batch 4, 6 steps, checkpoint every 2, no evaluation."""
    return [
        f"output_dir={output_dir}",
        *data_overrides,
        *TINY_MODEL,
        "seed=7",
        "max_steps=6",
        "save_every=2",
        "keep_last=2",
        "train.batch_size=4",
        "train.lr=3e-3",
        "train.val_every=3",
        "train.val_samples=4",
        "eval.after_train=false",
        "num_threads=1",
        *extra,
    ]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RSFUSE_CHECKPOINT_SAVE_DELAY", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def run_recipe(args: list[str], *, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the recipe to completion in a subprocess."""
    return subprocess.run(
        [sys.executable, str(ENTRY), *args], env=env or child_env(), capture_output=True, text=True, timeout=timeout
    )


def start_recipe(args: list[str], *, env: dict | None = None) -> subprocess.Popen:
    """Start the recipe in a subprocess (to be killed)."""
    return subprocess.Popen(
        [sys.executable, str(ENTRY), *args], env=env or child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
