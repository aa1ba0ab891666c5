"""``rsfuse serve --model DIR``: load the model once and serve it (OpenAI API + page) until Ctrl-C / SIGTERM.

Binds 127.0.0.1 unless ``--host`` says otherwise. On SIGINT/SIGTERM uvicorn stops accepting connections, lets
running answers finish for up to ``--graceful-timeout`` seconds, then the worker stops and the process exits 0.
"""

import argparse
import concurrent.futures
import logging
import os
import signal
import sys
from pathlib import Path

from rsfuse.options import DEFAULT_TEMPLATE, QUANTIZATIONS

__all__ = ["build", "main", "parser"]

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rsfuse serve", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model folder (any layout MFRSVLM.from_pretrained reads) or a Hub repository id")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) when --model is an id")
    p.add_argument("--quantization", default=None, choices=QUANTIZATIONS,
                        help="decoder linears weight-only: int8 (torchao) | int4 (torchao, CUDA) | nf4 (bitsandbytes)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=16, help="rows decoded together")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="an idle server waits this long for companions")
    p.add_argument("--max-length", type=int, default=None, help="cache positions per row (default: the context)")
    p.add_argument("--api-key", default=os.environ.get("RSFUSE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $RSFUSE_API_KEY)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--template", default=None,
                   help=f"conversation template (default: recorded in DIR, else {DEFAULT_TEMPLATE})")
    p.add_argument("--allow-local-images", type=Path, default=None, metavar="DIR",
                   help="also accept image_url paths of files inside DIR")
    p.add_argument("--name", default=None, help="model id in the API (default: the folder name)")
    p.add_argument("--max-body-mb", type=float, default=16.0)
    p.add_argument("--max-image-mb", type=float, default=10.0)
    p.add_argument("--max-image-pixels", type=int, default=25_000_000)
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests beyond the batch (429 beyond)")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampling generator")
    p.add_argument("--compile", action="store_true", help="compile the decode step (CUDA graphs on a GPU)")
    p.add_argument("--graceful-timeout", type=float, default=10.0)
    p.add_argument("--log-level", default="info")
    return p


def build(args: argparse.Namespace):
    """Load the model and tokenizer named by ``args``; returns the app."""
    import torch  # noqa: PLC0415

    from rsfuse.model.mfrsvlm import MFRSVLM  # noqa: PLC0415
    from rsfuse.processor import MFRSVLMProcessor  # noqa: PLC0415
    from rsfuse.serve.app import ServeSettings, create_app  # noqa: PLC0415
    from rsfuse.serve.inputs import PromptEncoder  # noqa: PLC0415
    from rsfuse.serve.limits import ServeLimits  # noqa: PLC0415

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dtype == "auto":
        gpu = device.startswith("cuda")
        dtype = torch.bfloat16 if gpu and torch.cuda.is_bf16_supported() else torch.float16 if gpu else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    if args.max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.allow_local_images is not None and not args.allow_local_images.is_dir():
        raise ValueError(f"--allow-local-images {args.allow_local_images}: not a folder")
    # Loaded in a thread that ends here: the main thread then never computes, and the generation worker is the only
    # thread with an OpenMP team (see rsfuse.serve.scheduler).
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rsfuse-serve-load") as loader:
        model = loader.submit(lambda: MFRSVLM.from_pretrained(
            args.model, revision=args.revision, quantization=args.quantization, dtype=dtype, device=device,
        ).eval()).result()
    processor = MFRSVLMProcessor.from_pretrained(args.model, template=args.template, revision=args.revision)
    encoder = PromptEncoder(model, processor)
    limits = ServeLimits(max_body_bytes=int(args.max_body_mb * 2**20), max_image_bytes=int(args.max_image_mb * 2**20),
                         max_image_pixels=args.max_image_pixels)
    settings = ServeSettings(
        model_name=args.name or Path(args.model).resolve().name, api_key=args.api_key or None,
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_length=args.max_length,
        max_queue=args.max_queue, local_images=args.allow_local_images, limits=limits, seed=args.seed,
        compile=args.compile,
    )
    app = create_app(model, encoder, settings)
    app.state.scheduler.start()  # before uvicorn: a session that cannot open is one error line, not a traceback
    return app


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import uvicorn  # noqa: PLC0415

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    if args.host not in LOOPBACK and not args.api_key:
        logging.warning("rsfuse serve: listening on %s without --api-key: anyone who reaches this port can use it",
                        args.host)
    app = build(args)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=args.graceful_timeout)
    server = uvicorn.Server(config)
    # uvicorn turns SIGINT/SIGTERM into a graceful shutdown, then re-sends the signal to the handler it found
    # installed: a no-op one here, so that a requested stop ends with status 0.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    logging.info("rsfuse serve: stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
