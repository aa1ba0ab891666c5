"""The page at ``/`` in a real headless browser (Debian's chromium, driven by playwright): upload an image, ask,
read the streamed answer (equal to ``MFRSVLM.generate``, greedy) and see the injection pictures appear."""

import os
import shutil

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
playwright_api = pytest.importorskip("playwright.sync_api")

from factories.mfrsvlm import make_model  # noqa: E402
from factories.serve import LiveServer, scene_image  # noqa: E402
from factories.tokenizer import tiny_tokenizer  # noqa: E402
from rsfuse.serve.app import ServeSettings, create_app  # noqa: E402
from rsfuse.serve.inputs import PromptEncoder  # noqa: E402

CHROMIUM = os.environ.get("RSFUSE_CHROMIUM", "/usr/bin/chromium")


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


@pytest.mark.parametrize("api_key", [None, "page-key"])
def test_page_uploads_asks_streams_and_shows_the_pictures(browser, tmp_path, api_key):
    model = make_model(0)
    tokenizer = tiny_tokenizer()
    encoder = PromptEncoder.for_model(model, tokenizer)
    image_path = tmp_path / "scene.png"
    image = scene_image(size=96, seed=11)
    image.save(image_path)
    question = "How many ships are in the harbour?"
    inputs = encoder.processor(images=[image], text=[question])
    expected = encoder.processor.batch_decode(model.generate(**inputs, max_new_tokens=12,
                                                             eos_token_id=list(encoder.processor.eos_token_ids)))[0]
    app = create_app(model, encoder, ServeSettings(model_name="micro", api_key=api_key))
    with LiveServer(app) as server:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.goto(server.url + "/")
            page.set_input_files("#image", str(image_path))
            page.wait_for_selector("#preview", state="visible")
            page.fill("#question", question)
            page.fill("#max-tokens", "12")
            if api_key:
                page.wait_for_selector("#api-key", state="visible")
                page.fill("#api-key", api_key)
            page.click("#ask")
            page.wait_for_selector('#answer[data-done="true"]', timeout=60_000)
            assert page.text_content("#answer") == expected
            page.wait_for_selector('#viz[data-loaded="true"]', timeout=60_000)
            width = page.evaluate("document.getElementById('viz').naturalWidth")
            assert width > 200
            assert "error" not in (page.get_attribute("#status", "class") or "")
            page.screenshot(path=str(tmp_path / "serve_page.png"), full_page=True)
        finally:
            page.close()
    assert (tmp_path / "serve_page.png").stat().st_size > 10_000
    if os.environ.get("RSFUSE_SERVE_SCREENSHOT"):  # docs/serve_page.png is made this way
        shutil.copy(tmp_path / "serve_page.png", os.environ["RSFUSE_SERVE_SCREENSHOT"])
