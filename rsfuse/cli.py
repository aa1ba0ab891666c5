"""The ``rsfuse`` console script: ``rsfuse [--debug] {train,eval,convert,synth,predict,viz,serve,scene} ...``.

Each subcommand forwards its remaining arguments to the module that implements it, imported only when used.
The error path is shared: an expected error (bad data, configuration, checkpoint — a wrongly typed ``config.json``
field or an integer weight included —, generation limits, a file that cannot be read or written) prints one line
naming the file, sample or key with exit status 2; ``--debug`` (anywhere on the line) or ``RSFUSE_DEBUG=1`` adds
the traceback. ``rsfuse predict`` also takes ``--bands R,G,B`` for multi-band TIFFs.
"""

import importlib
import os
import sys
import tempfile
from pathlib import Path

from rsfuse.recipes.errors import DEBUG_ENV, debug_requested, expected_errors, report_expected

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("rsfuse.recipes.train", "train MF-RSVLM: [--config FILE] [key=value ...] (no arguments = the embedded default)"),
    "eval": ("rsfuse.recipes.evaluate", "evaluate a model: [--config FILE] task=... model=DIR data=... output_dir=..."),
    "convert": ("rsfuse.model.convert", "convert any readable checkpoint layout to an rsfuse folder: SRC DST"),
    "synth": ("rsfuse.synthetic.benchmark", "write the synthetic remote-sensing benchmark: OUT --n N --seed S"),
    "predict": ("rsfuse.model.predict", "answer one question about one image: --model DIR --image FILE --question TEXT "
                                        "[--bands R,G,B]"),
    "viz": ("rsfuse.viz", "router weights / gate heat map for one image, or the loss curve of a run"),
    "serve": ("rsfuse.serve.cli", "OpenAI-compatible API + web page: --model DIR [--host] [--port] [--api-key]"),
    "scene": ("rsfuse.scene.cli", "one question about a whole GeoTIFF: --model DIR --image SCENE --question TEXT "
                                  "--out DIR"),
    "info": ("rsfuse.model.info", "parameters and device bytes per part: --model ID_OR_DIR [--quantization Q] "
                                  "(meta device, no weight read)"),
}


def usage() -> str:
    lines = ["usage: rsfuse [--debug] COMMAND [ARGS ...]", "", "commands:"]
    lines += [f"  {name:<8} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run 'rsfuse COMMAND --help' for the arguments of one command.",
              "--debug (or RSFUSE_DEBUG=1): show the traceback of an expected error (otherwise one line, exit 2)."]
    return "\n".join(lines)


def _option(argv: list[str], name: str) -> tuple[str | None, list[str]]:
    """Remove ``name VALUE`` / ``name=VALUE`` from ``argv``; returns (VALUE or None, the rest)."""
    rest, value, index = [], None, 0
    while index < len(argv):
        item = argv[index]
        if item == name and index + 1 < len(argv):
            value, index = argv[index + 1], index + 2
            continue
        if item.startswith(name + "="):
            value = item.split("=", 1)[1]
        else:
            rest.append(item)
        index += 1
    return value, rest


def _parse_bands(text: str) -> tuple[int, int, int]:
    from rsfuse.recipes.config import ConfigError

    try:
        bands = tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        bands = ()
    if len(bands) != 3 or min(bands) < 0:
        raise ConfigError(f"--bands {text!r}: expected three band indices R,G,B (0-based, e.g. --bands 3,2,1)")
    return bands  # type: ignore[return-value]


def _check_device(text: str) -> None:
    """``--device``: a torch device this machine has (cpu, cuda, cuda:N, mps), else one line naming it."""
    import torch

    from rsfuse.recipes.config import ConfigError

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {text!r}: not a device (cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {text!r}: no CUDA device is available on this machine (use --device cpu)")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {text!r}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {text!r}: MPS is not available on this machine (use --device cpu)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {text!r}: not a device rsfuse predict runs on (cpu, cuda, cuda:N or mps)")


def _predict(module, argv: list[str], debug: bool) -> int:
    """``rsfuse predict`` with ``--bands``: the chosen bands of the image are brought to 8-bit RGB (`load_image`)
    and handed to the predictor as a lossless PNG. The predictor's own expected errors are one line with status 2."""
    device_text, _ = _option(argv, "--device")
    if device_text is not None:
        _check_device(device_text)
    bands_text, argv = _option(argv, "--bands")
    with tempfile.TemporaryDirectory(prefix="rsfuse-predict-") as scratch:
        if bands_text is not None:
            from rsfuse.data.images import load_image

            bands = _parse_bands(bands_text)
            image, argv = _option(argv, "--image")
            if image is None:
                raise SystemExit(module.main(argv))  # argparse names the missing --image
            rgb = Path(scratch) / (Path(image).stem + ".png")
            load_image(image, bands=bands).save(rgb)
            argv = [*argv, "--image", str(rgb)]
        return int(module.main(argv) or 0)  # its own expected errors: one line, status 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [item for item in argv if item != "--debug"]
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"rsfuse: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    previous = os.environ.get(DEBUG_ENV)
    if debug:
        os.environ[DEBUG_ENV] = "1"  # the subcommand's own error path shows tracebacks too
    try:
        module = importlib.import_module(COMMANDS[command][0])
        if command == "predict":
            return _predict(module, rest, debug)
        result = module.main(rest)
        return int(result or 0)
    except expected_errors() as error:
        return report_expected(f"rsfuse {command}", error, debug=debug)
    except ValueError as error:
        if command != "predict":
            raise
        return report_expected(f"rsfuse {command}", error, debug=debug)  # generation limits (prompt too long, ...)
    except OSError as error:
        if error.filename is None:  # a file the user named cannot be read or written: a bad input, not a bug
            raise
        return report_expected(f"rsfuse {command}", error, debug=debug)
    finally:
        if debug:
            if previous is None:
                os.environ.pop(DEBUG_ENV, None)
            else:
                os.environ[DEBUG_ENV] = previous


if __name__ == "__main__":
    sys.exit(main())
