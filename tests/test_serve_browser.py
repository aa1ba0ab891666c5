"""The page at ``/`` in a real headless browser (Debian's chromium, driven by playwright), one browser for every
test: upload once, ask, follow up, read the streamed answers (equal to ``MFRSVLM.generate``, greedy) and see the
injection pictures; checks before upload, errors in words, a TIFF preview, one column on a phone, Stop / Clear /
Regenerate / Ctrl+Enter, text-only questions, progress, examples. Screenshots go to each test's temporary folder."""

import os
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
playwright_api = pytest.importorskip("playwright.sync_api")

from factories.mfrsvlm import make_model  # noqa: E402
from factories.serve import LiveServer, scene_image  # noqa: E402
from factories.tokenizer import tiny_tokenizer  # noqa: E402
from rsfuse.serve.app import ServeSettings, create_app  # noqa: E402
from rsfuse.serve.inputs import PromptEncoder  # noqa: E402
from rsfuse.serve.limits import ServeLimits  # noqa: E402
from rsfuse.serve.protocol import ImageRef, Turn  # noqa: E402

EXAMPLES = Path(__file__).parent.parent / "rsfuse" / "serve" / "static" / "examples"
CHROMIUM = os.environ.get("RSFUSE_CHROMIUM", "/usr/bin/chromium")
LIMITS = ServeLimits(max_image_bytes=150_000, max_image_pixels=1_000_000)
WAIT = 60_000


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (.ci/run installs Debian's chromium)")
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def model_and_encoder():
    model = make_model(0)
    return model, PromptEncoder.for_model(model, tiny_tokenizer())


@pytest.fixture(scope="module")
def server(model_and_encoder):
    model, encoder = model_and_encoder
    with LiveServer(create_app(model, encoder, ServeSettings(model_name="micro", limits=LIMITS))) as live:
        yield live


@pytest.fixture
def page(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.requests = []
    page.on("request", lambda request: page.requests.append((request.url, request.post_data or "")))
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model-name').textContent.includes('micro')")
    yield page
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    page.close()


def reference(model_and_encoder, turns: list[Turn], image, max_tokens: int) -> str:
    model, encoder = model_and_encoder
    tokens = model.generate(**encoder.batch([encoder.encode(turns, image)]), max_new_tokens=max_tokens,
                            eos_token_id=sorted(encoder.eos_ids))
    return encoder.decode(tokens[0].tolist()).rstrip("\ufffd")


def ask(page, question: str, max_tokens: int = 12) -> str:
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#question", question)
    page.click("#ask")
    page.wait_for_selector('#answer[data-done="true"]', timeout=WAIT)
    return answer_text(page)


def answer_text(page) -> str:
    """The last answer without its note ("(stopped at the token limit)")."""
    return page.evaluate("document.getElementById('answer').firstChild?.textContent ?? ''")


def uploads(page) -> list[str]:
    return [data for url, data in page.requests if ";base64," in data]


def status(page) -> str:
    return page.text_content("#status")


@pytest.mark.parametrize("api_key", [None, "page-key"])
def test_page_uploads_once_asks_follows_up_and_shows_the_pictures(browser, model_and_encoder, tmp_path, api_key):
    model, encoder = model_and_encoder
    image_path = EXAMPLES / "harbour.png"  # one of the example scenes the package ships
    image = Image.open(image_path).convert("RGB")
    app = create_app(model, encoder, ServeSettings(model_name="micro", api_key=api_key, limits=LIMITS))
    with LiveServer(app) as live:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.requests = []
        page.on("request", lambda request: page.requests.append((request.url, request.post_data or "")))
        try:
            page.goto(live.url + "/")
            if api_key:
                page.wait_for_selector("#api-key", state="visible")
                page.fill("#api-key", api_key)
            page.set_input_files("#image", str(image_path))
            page.wait_for_selector("#preview", state="visible")
            question, follow_up = "How many ships are in the harbour?", "Is there a bridge?"
            first = ask(page, question)
            expected = [Turn("user", question, ImageRef("x", "p"))]
            assert first == reference(model_and_encoder, expected, image, 12)
            page.wait_for_selector('#viz[data-loaded="true"]', timeout=WAIT)
            assert page.evaluate("document.getElementById('viz').naturalWidth") > 200
            second = ask(page, follow_up, 8)
            conversation = [*expected, Turn("assistant", first), Turn("user", follow_up)]
            assert second == reference(model_and_encoder, conversation, image, 8)
            assert page.locator(".turn").count() == 4
            page.wait_for_selector('#viz[data-loaded="true"]', timeout=WAIT)  # the follow-up's pictures too
            assert len(uploads(page)) == 1  # the image went up once; questions and pictures name its id
            assert "error" not in (page.get_attribute("#status", "class") or "")
            page.screenshot(path=str(tmp_path / "serve_page.png"), full_page=True)
        finally:
            page.close()


def test_files_are_checked_before_upload_and_errors_are_in_words(page, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.set_input_files("#image", str(notes))
    page.wait_for_selector("#status.error")
    assert "not an image the model can read" in status(page)
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(400_000))
    page.set_input_files("#image", str(big))
    page.wait_for_function("document.getElementById('status').textContent.includes('big.png')")
    assert "0.38 MB" in status(page) and "up to 0.14 MB" in status(page)
    assert uploads(page) == []  # neither left the browser
    renamed = tmp_path / "renamed.png"
    renamed.write_text("hello, I am text")
    page.set_input_files("#image", str(renamed))
    page.wait_for_function("document.getElementById('status').textContent.includes('could not be read')")
    assert "Unidentified" not in status(page) and page.is_hidden("#preview")


def test_a_tiff_gets_a_preview_from_the_server(page, tmp_path):
    path = tmp_path / "scene.tif"
    scene_image(size=80, seed=3).save(path, format="TIFF")
    page.set_input_files("#image", str(path))
    page.wait_for_selector("#preview", state="visible")
    page.wait_for_function("document.getElementById('preview').naturalWidth > 0")
    assert "80 × 80" in page.text_content("#image-info")


def test_one_column_on_a_phone(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 390, "height": 800})
    try:
        page.goto(server.url + "/")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        boxes = [page.locator("section").nth(i).bounding_box() for i in range(2)]
        assert boxes[1]["y"] >= boxes[0]["y"] + boxes[0]["height"]  # stacked
        assert page.locator("#question").bounding_box()["width"] > 300
        page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    finally:
        page.close()


def test_stop_cancels_the_answer_and_frees_its_row(page, server, monkeypatch):
    scheduler = server.app.state.scheduler
    cancelled = scheduler.stats["cancelled"]
    step = scheduler.session.step

    def slow_step():
        time.sleep(0.05)
        step()

    monkeypatch.setattr(scheduler.session, "step", slow_step)
    page.fill("#max-tokens", "150")
    page.fill("#question", "Describe the image.")
    page.click("#ask")
    page.wait_for_selector("#progress.working", state="visible")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Writing')", timeout=WAIT)
    assert scheduler.load()["running"] == 1
    page.click("#stop")
    page.wait_for_selector('#answer[data-done="true"]', timeout=WAIT)
    deadline = time.monotonic() + 30
    while scheduler.load()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scheduler.load()["running"] == 0 and scheduler.stats["cancelled"] == cancelled + 1
    assert "stopped by you" in page.text_content("#answer") and page.is_hidden("#progress")
    assert page.is_enabled("#ask") and page.is_disabled("#stop")


def test_text_only_ctrl_enter_regenerate_and_clear(page, model_and_encoder):
    question = "Is there a bridge?"
    page.fill("#max-tokens", "10")
    page.fill("#question", question)
    page.press("#question", "Control+Enter")
    page.wait_for_selector('#answer[data-done="true"]', timeout=WAIT)
    expected = reference(model_and_encoder, [Turn("user", question)], None, 10)
    assert answer_text(page) == expected
    page.click("#regenerate")
    page.wait_for_selector('#answer[data-done="true"]', timeout=WAIT)
    assert answer_text(page) == expected and page.locator(".turn").count() == 2
    page.click("#clear")
    assert page.locator(".turn").count() == 0 and page.is_disabled("#regenerate")


def test_max_tokens_zero_is_refused_and_an_error_replaces_the_pictures(page, tmp_path):
    path = tmp_path / "scene.png"
    scene_image(size=64, seed=5).save(path)
    page.set_input_files("#image", str(path))
    page.wait_for_selector("#preview", state="visible")
    page.fill("#max-tokens", "0")
    page.click("#ask")
    page.wait_for_selector("#status.error")
    assert "at least 1" in status(page) and page.locator(".turn").count() == 0
    assert not [url for url, _ in page.requests if "chat/completions" in url]  # nothing was sent
    ask(page, "What is in the image?", 4)
    page.wait_for_selector('#viz[data-loaded="true"]', timeout=WAIT)
    page.fill("#max-tokens", "100000")
    page.fill("#question", "And now?")
    page.click("#ask")
    page.wait_for_selector(".turn.failed", timeout=WAIT)
    assert "too long for the model" in status(page) and page.is_hidden("#viz")


def test_examples_fill_the_image_and_the_question(page):
    page.wait_for_selector("#examples button")
    assert page.locator("#examples button").count() >= 3
    page.locator("#examples button").first.click()
    page.wait_for_selector("#preview", state="visible")
    assert page.input_value("#question").endswith("?")
    assert "256 × 256" in page.text_content("#image-info")


def test_a_stopped_server_is_named_in_words(browser, model_and_encoder):
    model, encoder = model_and_encoder
    live = LiveServer(create_app(model, encoder, ServeSettings(model_name="micro")))
    page = browser.new_page()
    try:
        with live:
            page.goto(live.url + "/")
            page.wait_for_function("document.getElementById('model-name').textContent.includes('micro')")
        page.fill("#question", "Is there a ship?")
        page.click("#ask")
        page.wait_for_selector("#status.error", timeout=WAIT)
        assert "Cannot reach the server" in status(page) and "Failed to fetch" not in status(page)
    finally:
        page.close()
