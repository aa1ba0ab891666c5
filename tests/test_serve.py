"""``rsfuse serve`` against a live server on 127.0.0.1: the official ``openai`` client gets the answers that
``MFRSVLM.generate`` gives on the same inputs (greedy), streamed and not; batching, stop strings, disconnects,
the API key, and a clean SIGTERM shutdown of the real command."""

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from factories.mfrsvlm import make_model  # noqa: E402
from factories.serve import LiveServer, image_data_uri, scene_image  # noqa: E402
from factories.tokenizer import tiny_tokenizer, tiny_tokenizer_dir  # noqa: E402
from rsfuse.serve.app import ServeSettings, create_app  # noqa: E402
from rsfuse.serve.inputs import PromptEncoder  # noqa: E402

KEY = "test-key-123"


@pytest.fixture(scope="module")
def served():
    model = make_model(0)
    encoder = PromptEncoder.for_model(model, tiny_tokenizer())
    app = create_app(model, encoder, ServeSettings(model_name="micro", api_key=KEY, max_batch=4, max_wait_ms=50))
    with LiveServer(app) as server:
        server.model, server.encoder = model, encoder
        server.client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        yield server


def reference(server, question: str, image, max_tokens: int) -> str:
    """What ``MFRSVLM.generate`` answers (greedy) to the same question, through the processor; an answer cut inside
    a UTF-8 character drops its incomplete bytes (the server never sends U+FFFD for them)."""
    processor = server.encoder.processor
    inputs = processor(images=[image], text=[question])
    tokens = server.model.generate(**inputs, max_new_tokens=max_tokens, eos_token_id=list(processor.eos_token_ids))
    return processor.batch_decode(tokens)[0].rstrip("\ufffd")


def image_message(question: str, image) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_data_uri(image)}},
                                         {"type": "text", "text": question}]}]


def test_openai_client_answer_equals_generate(served):
    image = scene_image(seed=1)
    question = "How many ships are in the harbour?"
    response = served.client.chat.completions.create(
        model="micro", messages=image_message(question, image), max_tokens=10, temperature=0)
    expected = reference(served, question, image, 10)
    assert response.choices[0].message.content == expected
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].finish_reason in {"stop", "length"}
    usage = response.usage
    assert usage.completion_tokens >= 1 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens > served.model.config.num_visual_tokens  # image tokens are counted


def test_openai_client_stream_equals_generate(served):
    image = scene_image(seed=2)
    question = "Describe the image in detail."
    stream = served.client.chat.completions.create(
        model="micro", messages=image_message(question, image), max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True})
    pieces, reasons, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    assert "".join(pieces) == reference(served, question, image, 12)
    assert len(reasons) == 1 and usage is not None and 1 <= usage.completion_tokens <= 12


def test_text_only_and_multi_turn(served):
    response = served.client.chat.completions.create(
        model="micro", max_tokens=6, temperature=0,
        messages=[{"role": "user", "content": "Is there a bridge?"}])
    assert response.choices[0].message.content == reference(served, "Is there a bridge?", None, 6)
    multi = served.client.chat.completions.create(
        model="micro", max_tokens=4, temperature=0.8, top_p=0.9,
        messages=[*image_message("What is in the image?", scene_image(seed=3)),
                  {"role": "assistant", "content": "An airport."}, {"role": "user", "content": "How many planes?"}])
    assert multi.choices[0].finish_reason in {"stop", "length"} and multi.usage.completion_tokens <= 4


def test_models_health_and_api_key(served):
    assert [model.id for model in served.client.models.list().data] == ["micro"]
    wrong = openai.OpenAI(base_url=served.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="micro", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    for path in ("/v1/models", "/v1/chat/completions"):
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
        connection.request("POST" if "chat" in path else "GET", path, body=b"{}" if "chat" in path else None)
        response = connection.getresponse()
        body = json.loads(response.read())
        assert response.status == 401 and body["error"]["code"] == "invalid_api_key"
    with urllib.request.urlopen(served.url + "/health", timeout=30) as response:  # no key needed
        assert json.loads(response.read())["status"] == "ok"
    with urllib.request.urlopen(served.url + "/", timeout=30) as response:
        assert b"rsfuse serve" in response.read()


def test_concurrent_requests_share_steps_and_match_generate(served, monkeypatch):
    """Four requests sent together are prefilled together and decoded in shared steps; a short answer returns
    before the long ones finish; every answer equals its own unbatched ``generate``. "Before" is the scheduler's own
    order: the decoding step at which each request's ``done`` event is sent (no wall-clock instants)."""
    scheduler = served.app.state.scheduler
    stats = scheduler.stats
    before = dict(stats)
    questions = [("What is in the image?", 4, 0), ("How many ships?", 16, 1), ("Is there a river?", 16, 2),
                 ("Describe the image.", 16, 3)]
    results = {}
    done_at_step: list[tuple[int, int]] = []  # (max_new_tokens, scheduler step), in the order the worker sent them
    send = type(scheduler)._send

    def recording(job, event):
        if event[0] == "done":
            done_at_step.append((job.params.max_new_tokens, stats["steps"]))
        send(job, event)

    monkeypatch.setattr(scheduler, "_send", recording)
    barrier = threading.Barrier(len(questions))

    def ask(index, question, max_tokens, seed):
        barrier.wait()
        response = served.client.chat.completions.create(
            model="micro", messages=image_message(question, scene_image(seed=seed)), max_tokens=max_tokens,
            temperature=0)
        results[index] = response.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i, *item)) for i, item in enumerate(questions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for index, (question, max_tokens, seed) in enumerate(questions):
        assert results[index] == reference(served, question, scene_image(seed=seed), max_tokens)
    assert stats["max_rows_in_step"] >= 2
    assert stats["prefills"] - before["prefills"] < len(questions)  # at least two shared a prefill
    assert sorted(tokens for tokens, _ in done_at_step) == [4, 16, 16, 16]
    short_step = next(step for tokens, step in done_at_step if tokens == 4)
    assert short_step <= min(step for tokens, step in done_at_step if tokens == 16)
    assert done_at_step[0][0] == 4 or done_at_step[0][1] == short_step  # sent first (or in the same poll)


def test_stop_string_cuts_the_answer(served):
    question, image = "Describe the image.", scene_image(seed=4)
    full = reference(served, question, image, 12)
    stop = next((full[i:i + 2] for i in range(1, len(full) - 1) if full[i:i + 2].strip() and "\ufffd" not in
                 full[i:i + 2]), None)
    if stop is None:
        pytest.skip(f"the random model's answer {full!r} has no usable stop string")
    response = served.client.chat.completions.create(
        model="micro", messages=image_message(question, image), max_tokens=12, temperature=0, stop=[stop])
    assert response.choices[0].message.content == full[: full.find(stop)]
    assert response.choices[0].finish_reason == "stop"


def test_prompts_are_encoded_on_the_generation_worker(served, monkeypatch):
    """Every tensor computation of the server runs on one thread (``rsfuse.serve.scheduler``: a second thread with
    an OpenMP team slowed the CPU worker's kernels 1.6x, ``bench/compute_thread.py``): the session lives there and
    prompts are encoded there."""
    threads = []
    encode = served.encoder.encode

    def spy(turns, image):
        threads.append(threading.current_thread().name)
        return encode(turns, image)

    monkeypatch.setattr(served.encoder, "encode", spy)
    response = served.client.chat.completions.create(
        model="micro", messages=image_message("Is there a ship?", scene_image(seed=3)), max_tokens=2, temperature=0)
    assert response.choices[0].message.content is not None
    assert threads == ["rsfuse-serve-worker"]
    assert served.app.state.scheduler.session is not None


def test_client_disconnect_frees_its_row(served, monkeypatch):
    scheduler = served.app.state.scheduler
    cancelled = scheduler.stats["cancelled"]
    step = scheduler.session.step

    def slow_step():  # 100 tokens take >= 2 s: the disconnect is seen long before the answer could end
        time.sleep(0.02)
        step()

    monkeypatch.setattr(scheduler.session, "step", slow_step)
    body = json.dumps({"model": "micro", "messages": image_message("Describe the image.", scene_image(seed=5)),
                       "max_tokens": 100, "temperature": 0, "stream": True}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    connection.request("POST", "/v1/chat/completions", body=body,
                       headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: ")  # the stream began
    deadline = time.monotonic() + 30
    while not scheduler.load()["running"] and time.monotonic() < deadline:  # its row is decoding
        time.sleep(0.01)
    assert scheduler.load()["running"] == 1
    connection.sock.shutdown(2)
    connection.close()
    deadline = time.monotonic() + 30
    while scheduler.load()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scheduler.load()["running"] == 0
    assert scheduler.stats["cancelled"] == cancelled + 1, scheduler.stats
    assert served.client.models.list().data  # the server goes on


def test_a_row_leaves_running_together_with_its_counter(served, monkeypatch):
    """``load`` / ``snapshot`` (and /health) never see a row admitted, finished or cancelled without its counter:
    every snapshot taken while requests start and end keeps admitted == running + finished + cancelled. The counters
    are made slow to write (0.2 s) so that a reader would land between the two changes if they were not made under
    the lock the readers take (the browser test's Stop once read ``running`` 0 and ``cancelled`` not yet moved)."""
    scheduler = served.app.state.scheduler

    class SlowCounters(dict):
        def __setitem__(self, key, value):
            if key in ("admitted", "finished", "cancelled"):
                time.sleep(0.2)
            super().__setitem__(key, value)

    monkeypatch.setattr(scheduler, "stats", SlowCounters(scheduler.stats))
    start = scheduler.snapshot()
    assert start["running"] == 0

    def balance(snapshot) -> int:
        stats, first = snapshot["stats"], start["stats"]
        ended = sum(stats[key] - first[key] for key in ("finished", "cancelled"))
        return stats["admitted"] - first["admitted"] - snapshot["running"] - ended

    seen, done = [], threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.append(balance(scheduler.snapshot()))
            time.sleep(0.005)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        served.client.chat.completions.create(model="micro", messages=[{"role": "user", "content": "Hello"}],
                                              max_tokens=3, temperature=0)
        body = json.dumps({"model": "micro", "messages": [{"role": "user", "content": "Describe the image."}],
                           "max_tokens": 100, "temperature": 0, "stream": True}).encode()
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
        connection.request("POST", "/v1/chat/completions", body=body,
                           headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        assert connection.getresponse().readline().startswith(b"data: ")
        deadline = time.monotonic() + 30
        while not scheduler.load()["running"] and time.monotonic() < deadline:  # admitted: cancelled while running
            time.sleep(0.01)
        connection.sock.shutdown(2)
        connection.close()
        deadline = time.monotonic() + 30
        while (scheduler.snapshot()["stats"]["cancelled"] == start["stats"]["cancelled"]
               and time.monotonic() < deadline):
            time.sleep(0.05)
    finally:
        done.set()
        reader.join()
    end = scheduler.snapshot()
    assert end["stats"]["finished"] - start["stats"]["finished"] == 1
    assert end["stats"]["cancelled"] - start["stats"]["cancelled"] == 1
    assert len(seen) > 10 and set(seen) == {0}, sorted(set(seen))


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
def test_a_stream_cut_while_sending_closes_its_generator_at_once(spec_version):
    """The client goes away while a chunk is being sent (the generator is suspended at its ``yield``): the body
    generator's ``finally`` (the scheduler's cancel, in ``_sse``) runs before the response returns, with the garbage
    collector off. Starlette alone leaves it to the collector (spec 2.4: a failed send; 2.3: the disconnect listener
    cancels the send)."""
    import asyncio
    import gc

    from starlette.requests import ClientDisconnect

    from rsfuse.serve.app import ClosingStreamingResponse

    closed: list[str] = []

    async def body():
        try:
            for number in range(1000):
                yield f"data: {number}\n\n"
        finally:
            closed.append("closed")

    async def run() -> None:
        disconnected = asyncio.Event()

        async def send(message) -> None:
            if message["type"] == "http.response.body" and message["body"]:
                disconnected.set()
                if spec_version == "2.4":
                    raise OSError("the client went away")
                await asyncio.sleep(30)  # a send that blocks until the disconnect listener cancels it

        async def receive():
            await disconnected.wait()
            return {"type": "http.disconnect"}

        scope = {"type": "http", "asgi": {"spec_version": spec_version}}
        with pytest.raises(ClientDisconnect) if spec_version == "2.4" else contextlib.nullcontext():
            await asyncio.wait_for(ClosingStreamingResponse(body())(scope, receive, send), 10)
        assert closed == ["closed"]

    gc.disable()
    try:
        asyncio.run(run())
    finally:
        gc.enable()


def test_sigterm_stops_the_command_cleanly(tmp_path):
    """``rsfuse serve`` as a process: /health answers 200 once loaded, SIGTERM ends it with status 0."""
    folder = tmp_path / "model"
    make_model(0).save_pretrained(folder, tokenizer=tiny_tokenizer_dir() / "tokenizer.model")
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "rsfuse", "serve", "--model", str(folder), "--port", str(port), "--max-batch", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).parent.parent)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.stdout.read().decode()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "rsfuse serve did not become healthy"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
        output = process.stdout.read().decode()
        assert code == 0, output
        assert "stopped" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
