"""``rsfuse serve``: an OpenAI-compatible chat-completions API and a web page over one MF-RSVLM, batched.

* `rsfuse.serve.app.create_app(model, encoder, settings)`: the ASGI app (FastAPI) — routes, auth, limits;
* `rsfuse.serve.scheduler.Scheduler`: continuous batching over one ``GenerationSession`` in one worker thread;
* `rsfuse.serve.protocol`: the request checks and response bodies; `rsfuse.serve.images`: image decoding with
  limits; `rsfuse.serve.inputs`: prompts in, text out; `rsfuse.serve.cli.main`: the command.

Needs the ``serve`` extra (``pip install rsfuse[serve]``: fastapi, uvicorn, matplotlib for the page's pictures).
"""

__all__ = ["create_app", "main"]


def __getattr__(name: str):
    if name == "create_app":
        from rsfuse.serve.app import create_app

        return create_app
    if name == "main":
        from rsfuse.serve.cli import main

        return main
    raise AttributeError(f"module 'rsfuse.serve' has no attribute {name!r}")
