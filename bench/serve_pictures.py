"""Time of the page's pictures (``POST /v1/rsfuse/viz``) for a 4000 x 4000 upload on the tiny test model: drawn on
the image scaled to ``rsfuse.serve.pictures.FIGURE_SIDE`` vs on the whole image (as before issue 31), interleaved.

    PYTHONPATH=$PWD python bench/serve_pictures.py
"""
import base64
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from factories.mfrsvlm import make_model  # noqa: E402
from factories.serve import LiveServer  # noqa: E402
from factories.tokenizer import tiny_tokenizer  # noqa: E402
from test_serve_fuzz import post  # noqa: E402

import rsfuse.serve.pictures as pictures  # noqa: E402
from rsfuse.serve.app import ServeSettings, create_app  # noqa: E402
from rsfuse.serve.inputs import PromptEncoder  # noqa: E402

model = make_model(0)
encoder = PromptEncoder.for_model(model, tiny_tokenizer())
blocks = np.random.default_rng(0).integers(0, 255, (100, 100, 3), np.uint8)
big = Image.fromarray(np.kron(blocks, np.ones((40, 40, 1), np.uint8)))  # 4000 x 4000
buffer = io.BytesIO()
big.save(buffer, format="PNG")
uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
with LiveServer(create_app(model, encoder, ServeSettings(model_name="m"))) as server:
    status, _, text = post(server, json.dumps({"image": uri}), path="/v1/rsfuse/uploads")
    key = json.loads(text)["id"]
    body = json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": key}},
                       {"type": "text", "text": "Describe"}]}], "answer": "x"})
    for side in (10**6, pictures.FIGURE_SIDE, 10**6, pictures.FIGURE_SIDE):
        pictures.FIGURE_SIDE = side
        started = time.monotonic()
        status, _, _ = post(server, body, path="/v1/rsfuse/viz")
        print(f"side {side}: {time.monotonic() - started:.2f} s status {status}")
