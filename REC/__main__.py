"""One command line for PixelRec: ``python -m REC <command> [its arguments]``, or ``pixelrec <command>`` after
``pip install -e .``. ``python -m REC <command> --help`` shows a command's own options.

Each command is a module of ``REC.app`` (or, for ``import`` and ``encoders``, beside what it serves); nothing is
imported until a command is chosen, so ``python -m REC report`` starts without torch. ``main.py`` (= ``train``) and
``generate_lmdb.py`` (= ``pack``) stay as the paper's users type them.
"""
from __future__ import annotations

import difflib
import importlib
import sys

# command -> (module whose main(argv) -> exit status runs it, what it does)
COMMANDS = {
    "train": ("REC.app.launch", "train and test a model; the same as main.py"),
    "evaluate": ("REC.app.evaluate", "test a finished or killed run's checkpoint again"),
    "predict": ("REC.app.predict", "top-k recommendations of a run, for its users or given histories"),
    "sweep": ("REC.app.sweep", "hyper-parameter search: one training run per combination"),
    "report": ("REC.app.report", "one table (and plots) of finished runs"),
    "features": ("REC.app.features", "extract frozen visual features for the ViNet models"),
    "pack": ("REC.app.pack", "pack item covers into the LMDB; the same as generate_lmdb.py"),
    "import": ("REC.datasets.microlens", "import MicroLens pairs and covers into PixelRec's CSV format"),
    "encoders": ("REC.model.encoders.__main__", "list the image encoders, their readouts and sizes"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return "usage: python -m REC <command> [arguments]   (python -m REC <command> --help for its options)\n\n" \
           "commands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"python -m REC: error: unknown command {name!r}{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    status = module.main(rest)
    return 0 if status is None else int(status)


if __name__ == "__main__":
    sys.exit(main())
