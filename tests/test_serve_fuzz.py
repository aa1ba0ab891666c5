"""Hostile and malformed requests: every one is a 4xx JSON error in OpenAI's format, the server stays up, and a
good request that runs at the same time gets the same answer as ``MFRSVLM.generate``. Also: a prompt that fails at
prefill does not fail the requests batched with it."""

import base64
import copy
import http.client
import io
import json
import random
import struct
import threading
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from factories.mfrsvlm import make_model  # noqa: E402
from factories.serve import LiveServer, image_data_uri, scene_image  # noqa: E402
from factories.tokenizer import tiny_tokenizer  # noqa: E402
from rsfuse.generation import SamplingParams  # noqa: E402
from rsfuse.serve.app import ServeSettings, create_app  # noqa: E402
from rsfuse.serve.inputs import EncodedPrompt, PromptEncoder  # noqa: E402
from rsfuse.serve.limits import ServeLimits  # noqa: E402
from rsfuse.serve.protocol import Turn  # noqa: E402
from rsfuse.serve.scheduler import Job, Scheduler  # noqa: E402

LIMITS = ServeLimits(max_body_bytes=200_000, max_image_bytes=60_000, max_image_pixels=1_000_000)


@pytest.fixture(scope="module")
def served():
    model = make_model(0)
    encoder = PromptEncoder.for_model(model, tiny_tokenizer())
    app = create_app(model, encoder, ServeSettings(model_name="micro", max_batch=4, limits=LIMITS))
    with LiveServer(app) as server:
        server.model, server.encoder = model, encoder
        yield server


def post(server, body: bytes | str, path: str = "/v1/chat/completions", method: str = "POST",
         headers: dict | None = None) -> tuple[int, dict, str]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request(method, path, body=body.encode() if isinstance(body, str) else body,
                           headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def b64_uri(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode()


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height pixels, with one tiny (wrong) data chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def good_body(**changes) -> dict:
    body = {"model": "micro", "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image_data_uri(scene_image(seed=7))}},
        {"type": "text", "text": "Is there a ship?"}]}]}
    body.update(changes)
    return body


def with_part(part: dict, role: str = "user") -> dict:
    return good_body(messages=[{"role": role, "content": [part, {"type": "text", "text": "Is there a ship?"}]}])


def image_part(url) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def hostile_requests() -> list[tuple[str, bytes]]:
    cases: list[tuple[str, bytes | dict]] = []
    valid = json.dumps(good_body()).encode()
    # Malformed JSON: empty, truncated at 30 places, random bytes, invalid UTF-8, non-objects, deep nesting.
    cases += [("empty", b""), ("brace", b"{"), ("null", b"null"), ("number", b"42"), ("string", b'"hi"'),
              ("array", b"[]"), ("nan-body", b"NaN"), ("bad utf-8", b'{"model": "\xff\xfe"}'),
              ("deep", b"[" * 50_000 + b"]" * 50_000)]
    rng = random.Random(0)
    cases += [(f"truncated@{cut}", valid[:cut]) for cut in sorted(rng.sample(range(1, len(valid) - 1), 30))]
    cases += [(f"random bytes {seed}", random.Random(seed).randbytes(random.Random(seed).randint(1, 3000)))
              for seed in range(15)]
    # Known fields with the wrong type, out of range, or unsupported.
    for field, values in {
        "model": [1, [], {}], "messages": ["hi", [], [1], {}, None], "max_tokens": ["10", -1, 0, 1.5, True],
        "max_completion_tokens": ["5", 0], "temperature": ["hot", -0.1, 2.5, [1]], "top_p": [0, 1.5, "x", -1],
        "stop": [5, [1], [""], ["a"] * 9, "x" * 1000], "stream": ["yes", 1], "n": [2, 0, "1"],
        "logprobs": [True, "no"], "stream_options": [5, {"include_usage": "yes"}], "presence_penalty": [5, "x"],
        "frequency_penalty": [-3], "seed": ["x", 1.5], "user": [5],
    }.items():
        cases += [(f"{field}={value!r}"[:40], good_body(**{field: value})) for value in values]
    cases.append(("temperature NaN", json.dumps(good_body()).replace('"temperature": 0', '"temperature": NaN')
                  .encode()))
    # Messages and content parts the model cannot take.
    cases += [
        ("role tool", good_body(messages=[{"role": "tool", "content": "x"}])),
        ("role number", good_body(messages=[{"role": 5, "content": "x"}])),
        ("no role", good_body(messages=[{"content": "x"}])),
        ("content number", good_body(messages=[{"role": "user", "content": 5}])),
        ("part not object", good_body(messages=[{"role": "user", "content": ["x"]}])),
        ("part audio", with_part({"type": "input_audio", "input_audio": {}})),
        ("text number", with_part({"type": "text", "text": 5})),
        ("image placeholder in text", with_part({"type": "text", "text": "look <image> here"})),
        ("image_url number", with_part({"type": "image_url", "image_url": 5})),
        ("image_url empty", with_part(image_part(""))),
        ("last is assistant", good_body(messages=[{"role": "user", "content": "a"},
                                                  {"role": "assistant", "content": "b"}])),
        ("empty user", good_body(messages=[{"role": "user", "content": ""}])),
        ("late system", good_body(messages=[{"role": "user", "content": "a"}, {"role": "system", "content": "s"},
                                            {"role": "user", "content": "c"}])),
        ("image in assistant", good_body(messages=[{"role": "user", "content": "a"}, {"role": "assistant",
                                         "content": [image_part(image_data_uri(scene_image()))]},
                                         {"role": "user", "content": "c"}])),
        ("two images", with_part(image_part(image_data_uri(scene_image()))) | {"messages": [{"role": "user", "content": [
            image_part(image_data_uri(scene_image())), image_part(image_data_uri(scene_image(seed=1))),
            {"type": "text", "text": "compare"}]}]}),
        ("too many messages", good_body(messages=[{"role": "user", "content": "a"}] * 300)),
    ]
    # Images: bad URIs, bad base64, not images, truncated, too many bytes or pixels, bombs, refused modes.
    png = png_bytes(scene_image(size=64))
    big_noise = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (160, 160, 3), np.uint8)))
    tiff = io.BytesIO()
    try:
        import tifffile

        tifffile.imwrite(tiff, np.zeros((8, 8, 5), np.uint8), photometric="minisblack", planarconfig="contig")
    except ImportError:  # pragma: no cover
        tiff.write(b"II*\x00garbage")
    for name, url in [
        ("http url", "http://example.invalid/a.png"), ("file url", "file:///etc/passwd"), ("path", "/etc/passwd"),
        ("no comma", "data:image/png;base64"), ("text media", b64_uri(png, "text/plain")),
        ("not base64 flag", "data:image/png," + "A" * 40), ("bad base64", "data:image/png;base64,@@@@"),
        ("bad padding", "data:image/png;base64,abc"), ("empty data", "data:image/png;base64,"),
        ("not an image", b64_uri(b"hello world, not an image")), ("truncated png", b64_uri(png[: len(png) // 2])),
        ("png header only", b64_uri(png[:40])), ("random image bytes", b64_uri(random.Random(1).randbytes(500))),
        ("too many bytes", b64_uri(big_noise)), ("too many pixels", b64_uri(png_bytes(Image.new("RGB", (1200, 1200))))),
        ("bomb header", b64_uri(bomb_png(100_000, 100_000))), ("zero size", b64_uri(bomb_png(0, 10))),
        ("five-band tiff", b64_uri(tiff.getvalue(), "image/tiff")),
    ]:
        cases.append((f"image: {name}", with_part(image_part(url))))
    # Limits of the prompt and the cache.
    cases += [
        ("prompt beyond context", good_body(messages=[{"role": "user", "content": "ship " * 400}])),
        ("max_tokens beyond cache", good_body(max_tokens=250)),
        ("body too large", good_body(padding="x" * 300_000)),
    ]
    return [(name, body if isinstance(body, bytes) else json.dumps(body).encode()) for name, body in cases]


def assert_openai_error(status: int, headers: dict, text: str, name: str) -> dict:
    assert 400 <= status < 500, f"{name}: status {status}: {text[:300]}"
    assert headers.get("content-type", "").startswith("application/json"), name
    error = json.loads(text)["error"]
    assert isinstance(error["message"], str) and error["message"], name
    assert set(error) == {"message", "type", "param", "code"}, name
    return error


def test_hostile_requests_are_4xx_json_and_a_good_one_still_works(served):
    good = good_body(max_tokens=40, messages=[{"role": "user", "content": [
        image_part(image_data_uri(scene_image(seed=9))), {"type": "text", "text": "Describe the image."}]}])
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(result=post(served, json.dumps(good))))
    runner.start()  # a good request decoding while the hostile ones arrive

    cases = hostile_requests()
    assert len(cases) >= 100
    params = {}
    for name, body in cases:
        status, headers, text = post(served, body)
        params[name] = assert_openai_error(status, headers, text, name)["param"]
    assert params["max_tokens='10'"] == "max_tokens" and params["n=2"] == "n"
    assert params["image: bomb header"].endswith("image_url.url")
    assert params["max_tokens beyond cache"] == "max_tokens" and params["prompt beyond context"] == "messages"
    for method, path, expected in [("GET", "/v1/chat/completions", 405), ("GET", "/v1/nothing", 404),
                                   ("GET", "/v1/models/other", 404), ("DELETE", "/health", 405)]:
        status, headers, text = post(served, b"", path=path, method=method)
        assert status == expected
        assert_openai_error(status, headers, text, path)
    status, headers, text = post(served, b"{}", headers={"Content-Length": "999999999"})
    assert status == 413

    runner.join(120)
    status, _, text = outcome["result"]
    assert status == 200, text
    processor = served.encoder.processor
    inputs = processor(images=[scene_image(seed=9)], text=["Describe the image."])
    expected = served.model.generate(**inputs, max_new_tokens=40, eos_token_id=list(processor.eos_token_ids))
    assert json.loads(text)["choices"][0]["message"]["content"] == processor.batch_decode(expected)[0].rstrip("\ufffd")
    status, _, text = post(served, json.dumps(good_body()))
    assert status == 200 and json.loads(text)["choices"][0]["message"]["role"] == "assistant"


def test_a_prompt_failing_at_prefill_does_not_fail_its_batch(served):
    """Two prompts admitted together, one of them with a token id outside the vocabulary: the good one is answered,
    the bad one gets an error (the worker retries the batch prompt by prompt)."""
    model, encoder = served.model, served.encoder
    scheduler = Scheduler(model, batch=encoder.batch, max_batch=2, max_length=200, max_wait_ms=200,
                          decode=encoder.decode)
    good = encoder.encode([Turn("user", "Is there a ship?")], None)
    bad = copy.copy(good)
    bad.token_ids = [*good.token_ids[:-1], 10**6]
    events = {"good": [], "bad": []}
    done = threading.Event()

    def sink(name):
        def put(event):
            events[name].append(event)
            if all(any(kind in ("done", "error") for kind, _ in items) for items in events.values()):
                done.set()
        return put

    scheduler.start()
    try:
        params = SamplingParams(max_new_tokens=5, eos_token_ids=tuple(encoder.eos_ids))
        scheduler.submit(Job(good, params, sink("good")))
        scheduler.submit(Job(bad, params, sink("bad")))
        assert done.wait(60)
    finally:
        scheduler.stop()
    assert events["bad"][-1][0] == "error" and events["bad"][-1][1].status == 400
    tokens = [token for kind, value in events["good"] if kind == "tokens" for token in value]
    assert events["good"][-1][0] == "done"
    expected = model.generate(**encoder.batch([good]), max_new_tokens=5,
                              eos_token_id=sorted(encoder.eos_ids))[0].tolist()
    assert tokens and tokens == expected[: len(tokens)]


def test_local_images_only_inside_the_allowed_folder(served, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    scene_image(seed=3).save(allowed / "scene.png")
    scene_image(seed=4).save(tmp_path / "outside.png")
    (allowed / "escape.png").symlink_to(tmp_path / "outside.png")
    app = create_app(served.model, served.encoder, ServeSettings(model_name="micro", local_images=allowed,
                                                                 limits=LIMITS))
    with LiveServer(app) as server:
        for url, status in [(str(allowed / "scene.png"), 200), ("scene.png", 200),
                            ((allowed / "scene.png").as_uri(), 200), (str(tmp_path / "outside.png"), 400),
                            ("../outside.png", 400), (str(allowed / "escape.png"), 400),
                            (str(allowed / "missing.png"), 400), ("http://127.0.0.1/x.png", 400)]:
            code, headers, text = post(server, json.dumps(with_part(image_part(url))))
            assert code == status, (url, text)
            if status != 200:
                assert_openai_error(code, headers, text, url)


def test_text_stream_cuts_at_stop_strings_and_holds_back_partial_ones():
    from rsfuse.serve.inputs import TextStream  # noqa: PLC0415

    pieces = ["Two", " ships", " EN", "D and more"]
    stream = TextStream(lambda ids: "".join(pieces[i] for i in ids), stop=["END"])
    assert stream.push([0]) == "Two"
    assert stream.push([1]) == " ships"
    assert stream.push([2]) == " "  # "EN" may become "END": held back
    assert stream.push([3]) == "" and stream.stopped and stream.text == "Two ships "
    partial = TextStream(lambda ids: "ab\ufffd" if len(ids) == 1 else "abé")
    assert partial.push([0]) == "ab"  # half a UTF-8 character waits
    assert partial.push([1], final=True) == "é"


def test_a_session_that_cannot_open_fails_the_start_with_its_error(served):
    """The session opens on the worker thread; ``start`` waits for it and re-raises what opening it raised."""
    context = served.model.config.llm.max_position_embeddings
    scheduler = Scheduler(served.model, batch=served.encoder.batch, max_batch=1, max_length=context + 1)
    with pytest.raises(ValueError, match=f"{context + 1} positions .* max_position_embeddings = {context}"):
        scheduler.start()
    assert not scheduler.alive
    with pytest.raises(Exception, match="shutting down"):
        scheduler.submit(Job(None, SamplingParams(max_new_tokens=1), sink=lambda event: None))
