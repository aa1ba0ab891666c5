"""Issue 32, the server's items: a huge prompt is refused by a cheap bound before it is tokenised (it stalled every
client), only IP literals, localhost and ``--allow-host`` names are answered (DNS rebinding), bodies must be JSON,
missing and outside local files get one message, a many-band TIFF names its bands, EPS bytes labelled PNG never reach
Ghostscript, and ``--max-image-samples`` bounds width x height x bands."""

import base64
import io
import json

import numpy as np
import pytest
import tifffile
from PIL import EpsImagePlugin

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from factories.mfrsvlm import make_model  # noqa: E402
from factories.serve import LiveServer, image_data_uri, scene_image  # noqa: E402
from factories.tokenizer import tiny_tokenizer  # noqa: E402
from rsfuse.serve.app import ServeSettings, create_app, host_allowed  # noqa: E402
from rsfuse.serve.inputs import PromptEncoder  # noqa: E402
from rsfuse.serve.limits import ServeLimits  # noqa: E402
from test_serve_fuzz import assert_openai_error, good_body, image_part, post, with_part  # noqa: E402
from test_untrusted_images import EPS  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    allowed = tmp_path_factory.mktemp("allowed")
    scene_image(seed=3).save(allowed / "scene.png")
    scene_image(seed=4).save(allowed.parent / "outside.png")
    model = make_model(0)
    encoder = PromptEncoder.for_model(model, tiny_tokenizer())
    limits = ServeLimits(max_image_pixels=1_000_000, max_image_samples=20_000)
    app = create_app(model, encoder, ServeSettings(model_name="micro", local_images=allowed, limits=limits,
                                                   allowed_hosts=("rs.example",)))
    with LiveServer(app) as server:
        server.encoder, server.allowed = encoder, allowed
        yield server


def test_a_huge_prompt_is_refused_before_it_is_tokenised(served, monkeypatch):
    encoded = []
    encode = served.encoder.encode
    monkeypatch.setattr(served.encoder, "encode", lambda *args: encoded.append(1) or encode(*args))
    huge = good_body(messages=[{"role": "user", "content": "ships " * 1_000_000}])  # 6 MB: ~30 s to tokenise
    status, headers, text = post(served, json.dumps(huge))
    error = assert_openai_error(status, headers, text, "huge")
    assert error["code"] == "context_length_exceeded" and "6000000 characters" in error["message"]
    assert encoded == []  # refused before the worker thread saw it
    status, _, _ = post(served, json.dumps(good_body()))
    assert status == 200 and encoded == [1]
    assert served.encoder.longest_piece >= max(len(word) for word in "harbour airport".split())


@pytest.mark.parametrize("host,allowed", [
    ("127.0.0.1:8000", True), ("localhost:8000", True), ("[::1]:8000", True), ("10.1.2.3", True),
    ("rs.example:8000", True), ("RS.EXAMPLE.", True), ("evil.example", False), ("localhost.evil.example", False),
    ("", False),
])
def test_host_names(host, allowed):
    assert host_allowed(host, ("rs.example",)) is allowed
    assert host_allowed(host, ("*",))


def test_only_allowed_hosts_are_answered(served):
    for path, method in (("/", "GET"), ("/health", "GET"), ("/v1/chat/completions", "POST")):
        status, headers, text = post(served, json.dumps(good_body()), path=path, method=method,
                                     headers={"Host": "attacker.example"})
        error = assert_openai_error(status, headers, text, path)
        assert status == 403 and error["code"] == "host_not_allowed" and "--allow-host" in error["message"]
    for host in (f"localhost:{served.port}", "rs.example"):
        assert post(served, json.dumps(good_body()), headers={"Host": host})[0] == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", ""])
def test_bodies_must_be_json(served, content_type):
    status, headers, text = post(served, json.dumps(good_body()), headers={"Content-Type": content_type})
    error = assert_openai_error(status, headers, text, content_type)
    assert status == 415 and error["code"] == "unsupported_media_type"
    ok = post(served, json.dumps(good_body()), headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok[0] == 200


def test_missing_and_outside_local_files_get_one_message(served):
    answers = set()
    for url in (str(served.allowed / "missing.png"), str(served.allowed.parent / "outside.png"),
                "../outside.png", str(served.allowed.parent / "missing.png")):
        status, headers, text = post(served, json.dumps(with_part(image_part(url))))
        error = assert_openai_error(status, headers, text, url)
        answers.add((status, error["message"], error["code"]))
    assert len(answers) == 1
    assert post(served, json.dumps(with_part(image_part("scene.png"))))[0] == 200


def tiff_uri(bands: int, side: int = 8) -> str:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((side, side, bands), np.uint8), photometric="minisblack",
                     planarconfig="contig")
    return "data:image/tiff;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_a_many_band_tiff_names_its_bands(served):
    status, headers, text = post(served, json.dumps(with_part(image_part(tiff_uri(4)))))
    error = assert_openai_error(status, headers, text, "4-band")
    assert error["code"] == "unsupported_bands" and "4-band TIFF" in error["message"]
    assert "Unidentified" not in error["message"] and "bands=" not in error["message"]


def test_eps_bytes_labelled_png_never_reach_ghostscript(served, monkeypatch):
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "load", lambda *a, **k: pytest.fail("EPS decoded"))
    url = "data:image/png;base64," + base64.b64encode(EPS).decode()
    status, headers, text = post(served, json.dumps(with_part(image_part(url))))
    error = assert_openai_error(status, headers, text, "eps")
    assert error["code"] == "invalid_image" and "EPS" in error["message"]


def test_samples_limit_is_checked_before_decoding(served):
    """max_image_samples=20 000: a 3-band 80 x 80 image (19 200 samples) loads, a 3-band 96 x 96 (27 648) does not."""
    assert post(served, json.dumps(with_part(image_part(image_data_uri(scene_image(size=80))))))[0] == 200
    status, headers, text = post(served, json.dumps(with_part(image_part(image_data_uri(scene_image(size=96))))))
    error = assert_openai_error(status, headers, text, "samples")
    assert error["code"] == "image_too_large" and "samples" in error["message"]
