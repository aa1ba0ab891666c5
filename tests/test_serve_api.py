"""The API never silently ignores: unknown model ids are 404 ``model_not_found`` (``--name``/``--alias``), ``seed``
fixes a sampled answer whatever else is batched, every answer-changing field is honoured or a 400 naming it, text is
cut and streamed on whole UTF-8 characters, a tokenizer without byte fallback is refused at start in one line, and
every flag of ``rsfuse serve --help`` says what it does."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from factories.mfrsvlm import make_model  # noqa: E402
from factories.serve import LiveServer  # noqa: E402
from factories.tokenizer import TINY_CORPUS, tiny_tokenizer, tiny_tokenizer_dir  # noqa: E402
from rsfuse.llm.tokenizer import train_sentencepiece  # noqa: E402
from rsfuse.serve.app import ServeSettings, create_app  # noqa: E402
from rsfuse.serve.cli import parser  # noqa: E402
from rsfuse.serve.inputs import PromptEncoder, TextStream  # noqa: E402
from test_serve_fuzz import assert_openai_error, post  # noqa: E402

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def served():
    model = make_model(0)
    encoder = PromptEncoder.for_model(model, tiny_tokenizer())
    app = create_app(model, encoder, ServeSettings(model_name="micro", aliases=("gpt-4o", "mf-rsvlm"), max_batch=4,
                                                   max_wait_ms=100))
    with LiveServer(app) as server:
        server.model, server.encoder = model, encoder
        yield server


def ask(server, **fields) -> tuple[int, dict]:
    body = {"model": "micro", "max_tokens": 8, "messages": [{"role": "user", "content": "Describe the image."}],
            **fields}
    status, headers, text = post(server, json.dumps(body))
    return status, json.loads(text)


def test_unknown_model_is_404_and_aliases_are_answered(served):
    status, body = ask(served, model="gpt-3.5-turbo", temperature=0)
    assert status == 404 and body["error"]["code"] == "model_not_found" and body["error"]["param"] == "model"
    assert "'micro'" in body["error"]["message"] and "'gpt-4o'" in body["error"]["message"]
    answers = {name: ask(served, model=name, temperature=0) for name in ("micro", "gpt-4o", "mf-rsvlm")}
    assert {status for status, _ in answers.values()} == {200}
    assert len({body["choices"][0]["message"]["content"] for _, body in answers.values()}) == 1
    status, _, text = post(served, b"", path="/v1/models", method="GET")
    assert [card["id"] for card in json.loads(text)["data"]] == ["micro", "gpt-4o", "mf-rsvlm"]
    assert post(served, b"", path="/v1/models/gpt-4o", method="GET")[0] == 200
    assert post(served, b"", path="/v1/models/other", method="GET")[0] == 404


def test_seed_fixes_a_sampled_answer_whatever_else_is_batched(served):
    sampled = {"temperature": 1.0, "max_tokens": 16}
    alone = [ask(served, seed=1234, **sampled)[1]["choices"][0]["message"]["content"] for _ in range(2)]
    assert alone[0] == alone[1]
    other_seeds = {ask(served, seed=seed, **sampled)[1]["choices"][0]["message"]["content"] for seed in (1, 2, 3)}
    assert len(other_seeds | {alone[0]}) >= 3  # the seed is what changes the answer

    scheduler = served.app.state.scheduler
    before = scheduler.stats["max_rows_in_step"]
    scheduler.stats["max_rows_in_step"] = 0
    results = {}
    barrier = threading.Barrier(4)

    def run(index, seed):
        barrier.wait()
        results[index] = ask(served, seed=seed, **sampled)[1]["choices"][0]["message"]["content"]

    threads = [threading.Thread(target=run, args=(index, seed)) for index, seed in enumerate((1234, 7, 8, 9))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert scheduler.stats["max_rows_in_step"] >= 2  # it was batched with others
    scheduler.stats["max_rows_in_step"] = max(before, scheduler.stats["max_rows_in_step"])
    assert results[0] == alone[0]
    assert ask(served, seed=1234 - 2**63, **sampled)[1]["choices"][0]["message"]["content"] == alone[0]  # mod 2**63


@pytest.mark.parametrize("field,value", [
    ("tools", [{"type": "function", "function": {"name": "count_ships", "parameters": {}}}]),
    ("tool_choice", "required"), ("tool_choice", {"type": "function", "function": {"name": "f"}}),
    ("response_format", {"type": "json_object"}), ("response_format", {"type": "json_schema", "json_schema": {}}),
    ("presence_penalty", 0.5), ("frequency_penalty", -1), ("logit_bias", {"5": 100}), ("functions", [{"name": "f"}]),
    ("top_logprobs", 2), ("modalities", ["text", "audio"]), ("reasoning_effort", "low"),
    ("top_k", 5), ("repetition_penalty", 1.2), ("min_tokens", 3),
])
def test_answer_changing_fields_are_refused_naming_them(served, field, value):
    status, headers, text = post(served, json.dumps({"model": "micro", "max_tokens": 2, field: value,
                                                     "messages": [{"role": "user", "content": "hi"}]}))
    error = assert_openai_error(status, headers, text, field)
    assert status == 400 and error["param"] == field and field in error["message"]


def test_neutral_values_and_fields_that_change_nothing_are_accepted(served):
    plain = ask(served, temperature=0)[1]["choices"][0]["message"]["content"]
    status, body = ask(served, temperature=0, tools=[], tool_choice="none", response_format={"type": "text"},
                       presence_penalty=0, frequency_penalty=0.0, logit_bias={}, user="someone",
                       metadata={"k": "v"}, store=False, parallel_tool_calls=True, modalities=["text"])
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == plain


def test_text_is_cut_and_streamed_on_whole_utf8_characters():
    """Byte-fallback tokens of 'é', '船' and '🛰' pushed one by one: no delta holds U+FFFD or half a character, and
    an answer that ends inside a character drops its incomplete bytes."""
    tokenizer = tiny_tokenizer()
    text = "Ship é 船 🛰"
    ids = tokenizer.encode(text, bos=False)
    assert len(ids) > len(text.split()) + 4  # the non-ASCII characters are spelled in bytes

    def decode(tokens):
        return tokenizer.decode(list(tokens))

    stream = TextStream(decode)
    deltas = [stream.push([token]) for token in ids] + [stream.push([], final=True)]
    assert "".join(deltas) == decode(ids) and "\ufffd" not in decode(ids)
    assert all("\ufffd" not in delta for delta in deltas)
    for cut in range(1, len(ids)):  # an answer cut by max_tokens anywhere
        stream = TextStream(decode)
        deltas = [stream.push(ids[:cut][i:i + 3]) for i in range(0, cut, 3)] + [stream.push([], final=True)]
        assert "\ufffd" not in stream.text and "".join(deltas) == stream.text
        assert decode(ids).startswith(stream.text)


def test_a_tokenizer_without_byte_fallback_is_refused_at_start(tmp_path):
    tokenizer = train_sentencepiece(TINY_CORPUS, tmp_path / "plain", vocab_size=300, byte_fallback=False)
    model = make_model(0)
    with pytest.raises(ValueError, match="no byte fallback") as caught:
        create_app(model, PromptEncoder.for_model(model, tokenizer))
    assert "\n" not in str(caught.value)
    folder = tmp_path / "model"
    model.save_pretrained(folder, tokenizer=tmp_path / "plain" / "tokenizer.model")
    result = subprocess.run([sys.executable, "-m", "rsfuse", "serve", "--model", str(folder), "--port", "1"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT, env=os.environ)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and " INFO " not in line]
    assert len(lines) == 1 and "no byte fallback" in lines[0] and "Traceback" not in result.stderr


def test_every_flag_has_a_description_and_bad_values_are_one_line(tmp_path):
    for action in parser()._actions:
        assert action.help, f"{action.option_strings} has no --help description"
    folder = tmp_path / "model"
    make_model(0).save_pretrained(folder, tokenizer=tiny_tokenizer_dir() / "tokenizer.model")
    for flags, named in [(["--max-batch", "0"], "--max-batch"), (["--max-body-mb", "-1"], "--max-body-mb"),
                         (["--allow-local-images", str(tmp_path / "nodir")], "--allow-local-images"),
                         (["--max-image-pixels", "x"], "--max-image-pixels")]:
        result = subprocess.run([sys.executable, "-m", "rsfuse", "serve", "--model", str(folder), *flags],
                                capture_output=True, text=True, timeout=300, cwd=ROOT, env=os.environ)
        lines = [line for line in result.stderr.splitlines() if line.strip() and " INFO " not in line]
        assert result.returncode == 2 and len(lines) == 1 and named in lines[0], (flags, result.stderr)
