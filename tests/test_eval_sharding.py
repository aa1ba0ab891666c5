"""Batched and sharded evaluation: prompts batched by length with answers put back in record order, the rank files of
a sharded run folded into one predictions.jsonl, and torchrun with 2 CPU processes giving the predictions of one
process, also when resuming an interrupted sharded run."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from factories.eval_data import write_image
from factories.mfrsvlm import make_model
from factories.tokenizer import tiny_tokenizer, tiny_tokenizer_dir
from rsfuse.eval.predictions import consolidate, rank_file, rank_files, read_predictions
from rsfuse.model import MFRSVLM
from rsfuse.recipes import evaluate as recipe

REPO = Path(__file__).resolve().parents[1]

QUESTIONS = [
    "How many ships?",
    "What colour is the large circle near the top left corner of the image?",
    "Is there a bridge?",
    "How many red squares are there in the lower half of the image, next to the river?",
    "What is in the image?",
    "Describe the image.",
    "How many planes are parked near the terminal of the airport?",
]


def write_benchmark(root: Path, questions=QUESTIONS) -> Path:
    """A synthetic-task file with questions of different lengths (two images)."""
    write_image(root / "a.png")
    write_image(root / "b.png", colour=(200, 30, 30))
    entries = [{"id": f"q{i}", "image": "a.png" if i % 2 else "b.png",
                "conversations": [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": "x"}],
                "question_type": "count" if i % 2 else "color", "answer": "x"} for i, q in enumerate(questions)]
    path = root / "bench.json"
    path.write_text(json.dumps(entries))
    return path


def echo_generate(calls: list):
    """A stand-in for MFRSVLM.generate whose answer is the row's own prompt text (records recognisable by their
    answers); ``calls`` gets each batch's row lengths."""

    def generate(self, pixel_values, input_ids, attention_mask=None, *, max_new_tokens, **kwargs):
        rows = [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask)]
        calls.append([len(row) for row in rows])
        texts = [[token for token in row[1:] if token >= 0] for row in rows]  # no BOS, no image placeholder
        width = max(len(text) for text in texts) + 1
        out = torch.full((len(rows), width), 2, dtype=torch.long)  # EOS-padded
        for index, text in enumerate(texts):
            out[index, : len(text)] = torch.tensor(text)
        return out

    return generate


def test_length_order_is_longest_first_and_stable():
    assert recipe.length_order([3, 5, 3, 9, 5]) == [3, 1, 4, 0, 2]
    assert recipe.length_order([]) == []


def test_batches_by_length_and_answers_in_record_order(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(MFRSVLM, "generate", echo_generate(calls))
    records = recipe.read_task("synthetic", write_benchmark(tmp_path))
    out = tmp_path / "predictions.jsonl"
    recipe.evaluate(make_model(seed=0), tiny_tokenizer(), "synthetic", records, batch_size=3,
                    predictions_path=out, max_new_tokens=4)
    assert [len(batch) for batch in calls] == [3, 3, 1]
    widths = [length for batch in calls for length in batch]
    assert widths == sorted(widths, reverse=True)  # longest prompts first, batched together
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == [f"q{i}" for i in range(len(QUESTIONS))]  # record order restored
    for line, question in zip(lines, QUESTIONS):
        assert question.rstrip("?") in line["prediction"]  # each answer belongs to its own record


def test_consolidate_folds_rank_files(tmp_path):
    identity = {"task": "t", "model": "m", "data": "d"}
    path = tmp_path / "predictions.jsonl"

    def line(identifier, prediction="p"):
        return json.dumps({**identity, "id": identifier, "prediction": prediction}) + "\n"

    path.write_text(line("b") + line("z"))
    rank_file(path, 0).write_text(line("c") + line("b", "other"))
    rank_file(path, 1).write_text(line("a") + line("d")[:12])  # torn last line: a kill mid-write
    rank_file(path, 12).write_text(line("e"))
    (tmp_path / "predictions.rankx.jsonl").write_text("not ours")
    assert [p.name for p in rank_files(path)] == ["predictions.rank0.jsonl", "predictions.rank1.jsonl",
                                                  "predictions.rank12.jsonl"]
    done = consolidate(path, identity, ["a", "b", "c", "d", "e"])
    assert list(done) == ["a", "b", "c", "e", "z"]  # record order, then answers to ids outside this run
    assert done["b"] == "p"  # each id once: the first answer wins
    assert rank_files(path) == []
    assert list(read_predictions(path, identity)) == list(done)


def test_leftover_rank_files_are_resumed_by_one_process(tmp_path, monkeypatch):
    """An interrupted sharded run (rank files only) resumed by a single process generates only what is missing."""
    calls: list = []
    monkeypatch.setattr(MFRSVLM, "generate", echo_generate(calls))
    records = recipe.read_task("synthetic", write_benchmark(tmp_path))
    identity = {"task": "synthetic", "model": "m", "data": "d"}
    out = tmp_path / "predictions.jsonl"
    kwargs = dict(batch_size=2, predictions_path=out, identity=identity, max_new_tokens=4)
    recipe.evaluate(make_model(seed=0), tiny_tokenizer(), "synthetic", records, **kwargs)
    full = out.read_text().splitlines(keepends=True)
    out.unlink()
    rank_file(out, 0).write_text(full[0] + full[3])
    rank_file(out, 1).write_text(full[5] + full[6][:20])
    calls.clear()
    recipe.evaluate(make_model(seed=0), tiny_tokenizer(), "synthetic", records, **kwargs)
    assert sum(len(batch) for batch in calls) == len(records) - 3
    assert out.read_text().splitlines(keepends=True) == full
    assert rank_files(out) == []


# ---------------------------------------------------------------------------------------------------- torchrun


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _eval(args: list[str], processes: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if processes == 1:
        command = [sys.executable, str(REPO / "recipes" / "mf_rsvlm_eval.py"), *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                   "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
                   str(REPO / "recipes" / "mf_rsvlm_eval.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "micro"
    make_model(seed=5).save_pretrained(folder, tokenizer=tiny_tokenizer_dir())
    return folder


@pytest.mark.slow
def test_torchrun_two_processes_match_one_and_resume(model_dir, tmp_path):
    data = write_benchmark(tmp_path / "data")
    common = [f"model={model_dir}", "task=synthetic", f"data={data}", "batch_size=2", "max_new_tokens=5",
              "progress=false", "num_threads=1"]
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    done = _eval([*common, f"output_dir={single}"], 1)
    assert done.returncode == 0, done.stderr
    done = _eval([*common, f"output_dir={sharded}"], 2)
    assert done.returncode == 0, done.stderr
    reference = (single / "predictions.jsonl").read_text()
    assert (sharded / "predictions.jsonl").read_text() == reference
    assert rank_files(sharded / "predictions.jsonl") == []
    metrics = json.loads((sharded / "metrics.json").read_text())
    assert metrics["processes"] == 2
    assert "0 answers reused" in done.stderr and "7 generated (4, 3 per process)" in done.stderr  # each once
    assert metrics["result"] == json.loads((single / "metrics.json").read_text())["result"]

    # Interrupted sharded run: a few answers in each rank file (one torn), no merged file, no metrics.
    lines = reference.splitlines(keepends=True)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    rank_file(resumed / "predictions.jsonl", 0).write_text(lines[2] + lines[4][:15])
    rank_file(resumed / "predictions.jsonl", 1).write_text(lines[1])
    done = _eval([*common, f"output_dir={resumed}"], 2)
    assert done.returncode == 0, done.stderr
    assert (resumed / "predictions.jsonl").read_text() == reference  # each id once, record order
    assert "2 answers reused" in done.stderr and "5 generated" in done.stderr
    assert rank_files(resumed / "predictions.jsonl") == []
