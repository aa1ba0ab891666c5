"""Issue 17 for evaluation: prompts beyond the decoder's context are counted and reported (or refused by a key) before
generate is called; an unreadable image is skipped and counted with skip_bad=true, and without it the run stops with
one line naming the file and the record after every finished answer (its own batch included) is saved."""

import json
from pathlib import Path

import pytest
import torch

from factories.eval_data import write_image
from factories.mfrsvlm import make_model
from factories.tokenizer import tiny_tokenizer, tiny_tokenizer_dir
from rsfuse.model import MFRSVLM
from rsfuse.recipes import evaluate as recipe

LONG_QUESTION = " ".join(["How many ships are in the harbour next to the river?"] * 30)


def write_benchmark(root: Path, questions: list[str], *, corrupt: set[int] = frozenset(),
                    missing: set[int] = frozenset()) -> Path:
    entries = []
    for index, question in enumerate(questions):
        name = f"img_{index}.png"
        if index in corrupt:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        elif index not in missing:
            write_image(root / name, colour=(20 * index, 90, 160))
        entries.append({"id": f"r{index}", "image": name, "question_type": "count", "answer": "3",
                        "conversations": [{"from": "human", "value": f"<image>\n{question}"},
                                          {"from": "gpt", "value": "3"}]})
    path = root / "bench.json"
    path.write_text(json.dumps(entries))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "micro"
    make_model(seed=2).save_pretrained(folder, tokenizer=tiny_tokenizer_dir())
    return folder


@pytest.fixture
def generated(monkeypatch) -> list:
    """Every batch model.generate receives: (batch size, prompt width, max_new_tokens)."""
    calls: list = []
    original = MFRSVLM.generate

    def recording(self, pixel_values, input_ids, *rest, **kwargs):
        calls.append((input_ids.shape[0], input_ids.shape[1], kwargs["max_new_tokens"]))
        return original(self, pixel_values, input_ids, *rest, **kwargs)

    monkeypatch.setattr(MFRSVLM, "generate", recording)
    return calls


def _run(model_dir: Path, data: Path, out: Path, *args: str) -> int:
    return recipe.main([f"model={model_dir}", "task=synthetic", f"data={data}", f"output_dir={out}", "batch_size=8",
                        "max_new_tokens=4", "progress=false", *args])


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---------------------------------------------------------------------------------------------------- context length


def test_decoder_length_is_the_models_sequence_length():
    model, tokenizer = make_model(seed=0), tiny_tokenizer()
    for question in ("Is there a bridge?", "How many red squares are there in the lower half?"):
        ids = recipe.encode_prompt({"prompt": question}, tokenizer, "vicuna_v1")
        assert ids.count(model.config.image_token_index) == 1
        logits = model(torch.zeros(1, 3, 32, 32), torch.tensor([ids])).logits
        assert recipe.decoder_length(ids, model) == logits.shape[1]
    assert recipe.context_limit(model) == 256


def test_too_long_boundary_is_exact(tmp_path):
    model, tokenizer = make_model(seed=0), tiny_tokenizer()
    data = write_benchmark(tmp_path, ["Is there a bridge?"])
    records = recipe.read_task("synthetic", data)
    length = recipe.decoder_length(recipe.encode_prompt(records[0], tokenizer, "vicuna_v1"), model)
    fits, report = 256 - length, {}
    recipe.evaluate(model, tokenizer, "synthetic", records, max_new_tokens=fits, report=report)
    assert report["unanswered"]["too_long"] == 0 and report["generated"] == 1
    with pytest.raises(recipe.EvalInputError, match="no record .* could be answered .*too_long: 1"):
        recipe.evaluate(model, tokenizer, "synthetic", records, max_new_tokens=fits + 1)


def test_too_long_prompts_are_counted_not_generated(model_dir, tmp_path, generated, capsys):
    data = write_benchmark(tmp_path / "data", ["Is there a bridge?", LONG_QUESTION, "What colour is it?"])
    out = tmp_path / "out"
    assert _run(model_dir, data, out) == 0
    width_limit = 256 - 64  # text positions left beside the 64 visual tokens
    assert generated and all(width + new <= width_limit for _, width, new in generated)
    assert sum(rows for rows, _, _ in generated) == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["samples"], metrics["scored"]) == (3, 2)
    assert metrics["unanswered"] == {"too_long": 1, "bad_image": 0}
    assert metrics["result"]["total"] == 2
    assert [entry["id"] for entry in _lines(out / "unanswered.jsonl")] == ["r1"]
    assert "> 256" in _lines(out / "unanswered.jsonl")[0]["detail"]
    assert "too_long: 1" in (out / "metrics.md").read_text()
    assert "1 of 3 records not answered" in capsys.readouterr().err
    assert sorted(line["id"] for line in _lines(out / "predictions.jsonl")) == ["r0", "r2"]


def test_too_long_refuse_stops_before_generating(model_dir, tmp_path, generated, capsys):
    data = write_benchmark(tmp_path / "data", ["Is there a bridge?", LONG_QUESTION])
    out = tmp_path / "out"
    assert _run(model_dir, data, out, "too_long=refuse") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "record 'r1'" in error and "max_position_embeddings 256" in error and "max_new_tokens 4" in error
    assert generated == [] and _lines(out / "predictions.jsonl") == []


# ---------------------------------------------------------------------------------------------------- bad images


def test_bad_image_stops_with_one_line_after_saving_its_batch(model_dir, tmp_path, generated, capsys):
    questions = ["Is there a bridge?", "How many ships are in the harbour?", "What colour is the roof?"]
    data = write_benchmark(tmp_path / "data", questions, corrupt={1})
    out = tmp_path / "out"
    assert _run(model_dir, data, out) == 2  # one batch of 3: the bad image is in it
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert str(tmp_path / "data" / "img_1.png") in error and "record 'r1'" in error and "skip_bad=true" in error
    assert sorted(line["id"] for line in _lines(out / "predictions.jsonl")) == ["r0", "r2"]  # its batch is kept
    assert not (out / "metrics.json").exists()

    generated.clear()
    assert _run(model_dir, data, out, "skip_bad=true") == 0
    assert generated == []  # the two answers are reused; the bad image is only counted
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["unanswered"] == {"too_long": 0, "bad_image": 1} and metrics["scored"] == 2
    entry = _lines(out / "unanswered.jsonl")[0]
    assert entry["id"] == "r1" and entry["reason"] == "bad_image" and "img_1.png" in entry["detail"]


def test_missing_image_refused_by_the_reader_or_counted(model_dir, tmp_path, capsys):
    data = write_benchmark(tmp_path / "data", ["Is there a bridge?", "What colour is the roof?"], missing={0})
    out = tmp_path / "out"
    assert _run(model_dir, data, out) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "img_0.png" in error and "not found" in error
    assert _run(model_dir, data, out, "skip_bad=true") == 0
    assert json.loads((out / "metrics.json").read_text())["unanswered"]["bad_image"] == 1


def test_bad_image_in_process_keeps_finished_answers(tmp_path):
    model, tokenizer = make_model(seed=0), tiny_tokenizer()
    # Longest prompts go first: the bad image (shortest prompt) comes in the last batch.
    data = write_benchmark(tmp_path, ["Is there a bridge?", "How many?", "What colour is the roof?"], corrupt={1})
    records = recipe.read_task("synthetic", data)
    path = tmp_path / "predictions.jsonl"
    with pytest.raises(recipe.EvalInputError, match="img_1.png.*record 'r1'"):
        recipe.evaluate(model, tokenizer, "synthetic", records, batch_size=1, predictions_path=path,
                        max_new_tokens=2)
    assert sorted(line["id"] for line in _lines(path)) == ["r0", "r2"]
    report: dict = {}
    result = recipe.evaluate(model, tokenizer, "synthetic", records, batch_size=1, predictions_path=path,
                             max_new_tokens=2, skip_bad=True, report=report)
    assert result["total"] == 2 and report["unanswered"]["bad_image"] == 1 and report["generated"] == 0
