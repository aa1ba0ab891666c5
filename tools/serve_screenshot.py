"""How ``docs/serve_page.png`` is made: ``rsfuse serve`` the committed trained model, open its page in headless
chromium (playwright), upload an image of the synthetic benchmark that the model never saw in training (data seed
``--data-seed``), ask it the benchmark's own questions about that image, wait for the pictures, take the screenshot.

    python tools/serve_screenshot.py --out docs/serve_page.png

The truth (the benchmark's answers) and the page's answers are printed, so the screenshot's caption can be checked.
Needs the ``serve`` extra, playwright and Debian's chromium (``apt-get install -y chromium``).
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

from rsfuse.synthetic.benchmark import DEFAULT_QUESTIONS_PER_IMAGE
from rsfuse.synthetic.drawing import draw_image

ROOT = Path(__file__).resolve().parent.parent
WAIT_MS = 120_000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "synthetic_study" / "mf_rsvlm")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "serve_page.png")
    parser.add_argument("--data-seed", type=int, default=7, help="benchmark data seed (the model trained on seed 0)")
    parser.add_argument("--index", type=int, default=26, help="image index in that dataset")
    parser.add_argument("--chromium", default=os.environ.get("RSFUSE_CHROMIUM", "/usr/bin/chromium"))
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"rsfuse serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"rsfuse serve did not answer {url}/health in 120 s")


def ask(page, question: str, max_tokens: int) -> str:
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#question", question)
    page.click("#ask")
    page.wait_for_selector('#answer[data-done="true"]', timeout=WAIT_MS)
    page.wait_for_selector('#viz[data-loaded="true"]', timeout=WAIT_MS)
    return page.evaluate("document.getElementById('answer').firstChild?.textContent ?? ''")


def main() -> None:
    args = parse_args()
    try:
        from playwright.sync_api import sync_playwright  # noqa: PLC0415
    except ImportError:
        raise SystemExit("tools/serve_screenshot.py: needs playwright: pip install -e '.[dev]'") from None
    if not shutil.which(args.chromium):
        raise SystemExit(f"tools/serve_screenshot.py: {args.chromium} is missing: apt-get install -y chromium")
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"tools/serve_screenshot.py: {args.model}: no config.json (not a model folder)")

    _, pixels, questions = draw_image(args.data_seed, args.index, size=224,
                                           questions_per_image=DEFAULT_QUESTIONS_PER_IMAGE)
    asked = [(qa.question, qa.answer) for qa in questions if qa.question_type in ("caption", "count")][:2]
    with tempfile.TemporaryDirectory() as scratch:
        image = Path(scratch) / f"benchmark_seed{args.data_seed}_{args.index:06d}.png"
        Image.fromarray(pixels).save(image)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "rsfuse", "serve", "--model", str(args.model), "--port",
                                   str(port), "--name", "mf_rsvlm (synthetic study)", "--log-level", "warning"])
        try:
            wait_healthy(url, server)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=args.chromium, headless=True)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(url + "/")
                page.set_input_files("#image", str(image))
                page.wait_for_selector("#preview", state="visible")
                for question, truth in asked:
                    answer = ask(page, question, 24)
                    print(f"Q: {question}\n   page: {answer!r}\n   truth: {truth!r}")
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
        finally:
            server.terminate()
            server.wait(30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
