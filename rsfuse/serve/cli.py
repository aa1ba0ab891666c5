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

__all__ = ["ServeConfigError", "build", "main", "parser"]

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class ServeConfigError(ValueError):
    """A flag or the model folder cannot be served: ``main`` prints one line and exits 2."""


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2 (argparse adds the usage block)
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rsfuse serve", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True,
                   help="model folder (any layout MFRSVLM.from_pretrained reads) or a Hub repository id")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) when --model is an id")
    p.add_argument("--quantization", default=None, choices=QUANTIZATIONS,
                   help="decoder linears weight-only: int8 (torchao) | int4 (torchao, CUDA) | nf4 (bitsandbytes)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header is NAME (repeatable; '*': any). By default only IP "
                        "addresses and localhost are answered, so that a web page cannot reach the server through "
                        "a name of its own (DNS rebinding)")
    p.add_argument("--name", default=None, help="model id in the API (default: the folder name)")
    p.add_argument("--alias", action="append", default=[], metavar="ID",
                   help="another model id the API answers to (repeatable); any other id is a 404 model_not_found")
    p.add_argument("--max-batch", type=_positive(int), default=16, help="rows decoded together (default 16)")
    p.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="an idle server waits this long for companions (default 10)")
    p.add_argument("--max-length", type=_positive(int), default=None,
                   help="cache positions per row: prompt + answer (default: the model's context)")
    p.add_argument("--api-key", default=os.environ.get("RSFUSE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $RSFUSE_API_KEY)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto: a GPU if present)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights' dtype (default auto: bfloat16 or float16 on a GPU, float32 on the CPU)")
    p.add_argument("--template", default=None,
                   help=f"conversation template (default: recorded in DIR, else {DEFAULT_TEMPLATE})")
    p.add_argument("--allow-local-images", type=Path, default=None, metavar="DIR",
                   help="also accept image_url paths of files inside DIR")
    p.add_argument("--max-body-mb", type=_positive(float), default=16.0,
                   help="largest request body in MiB, images included (default 16; 413 beyond)")
    p.add_argument("--max-image-mb", type=_positive(float), default=10.0,
                   help="largest image file in MiB (default 10)")
    p.add_argument("--max-image-pixels", type=_positive(int), default=25_000_000,
                   help="largest image in width x height, read from its header (default 25000000)")
    p.add_argument("--max-image-samples", type=_positive(int), default=None,
                   help="largest image in width x height x bands, read from its header before decoding (default: "
                        "four times --max-image-pixels)")
    p.add_argument("--max-queue", type=_positive(int), default=256,
                   help="waiting requests beyond the batch (default 256; 429 beyond)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the generator that seeds requests without their own 'seed'")
    p.add_argument("--compile", action="store_true", help="compile the decode step (CUDA graphs on a GPU)")
    p.add_argument("--graceful-timeout", type=float, default=10.0,
                   help="seconds running answers may take to finish after Ctrl-C / SIGTERM (default 10)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug", "trace"],
                   help="log verbosity (default info)")
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
    if args.allow_local_images is not None and not args.allow_local_images.is_dir():
        raise ServeConfigError(f"--allow-local-images {args.allow_local_images}: not a folder")
    # Loaded in a thread that ends here: the main thread then never computes, and the generation worker is the only
    # thread with an OpenMP team (see rsfuse.serve.scheduler).
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rsfuse-serve-load") as loader:
        model = loader.submit(lambda: MFRSVLM.from_pretrained(
            args.model, revision=args.revision, quantization=args.quantization, dtype=dtype, device=device,
        ).eval()).result()
    processor = MFRSVLMProcessor.from_pretrained(args.model, template=args.template, revision=args.revision)
    encoder = PromptEncoder(model, processor)
    try:
        encoder.check()
    except ValueError as error:
        raise ServeConfigError(f"--model {args.model}: {error}") from None
    limits = ServeLimits(max_body_bytes=int(args.max_body_mb * 2**20), max_image_bytes=int(args.max_image_mb * 2**20),
                         max_image_pixels=args.max_image_pixels, max_image_samples=args.max_image_samples)
    settings = ServeSettings(
        model_name=args.name or Path(args.model).resolve().name, aliases=tuple(args.alias),
        api_key=args.api_key or None, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        max_length=args.max_length, max_queue=args.max_queue, local_images=args.allow_local_images,
        allowed_hosts=tuple(args.allow_host), limits=limits, seed=args.seed, compile=args.compile,
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
    try:
        app = build(args)
    except ServeConfigError as error:
        print(f"rsfuse serve: {error}", file=sys.stderr)
        return 2
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
