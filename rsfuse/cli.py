"""The ``rsfuse`` console script: ``rsfuse {train,eval,convert,synth,predict,viz} ...``.

Each subcommand forwards its remaining arguments to the module that implements it, imported only when used.
"""

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("rsfuse.recipes.train", "train MF-RSVLM: [--config FILE] [key=value ...] (no arguments = the embedded default)"),
    "eval": ("rsfuse.recipes.evaluate", "evaluate a model: [--config FILE] task=... model=DIR data=... output_dir=..."),
    "convert": ("rsfuse.model.convert", "convert any readable checkpoint layout to an rsfuse folder: SRC DST"),
    "synth": ("rsfuse.data.synthetic", "write the synthetic remote-sensing benchmark: OUT --n N --seed S"),
    "predict": ("rsfuse.model.predict", "answer one question about one image: --model DIR --image FILE --question TEXT"),
    "viz": ("rsfuse.viz", "router weights / gate heat map for one image, or the loss curve of a run"),
}


def usage() -> str:
    lines = ["usage: rsfuse COMMAND [ARGS ...]", "", "commands:"]
    lines += [f"  {name:<8} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run 'rsfuse COMMAND --help' for the arguments of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"rsfuse: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
