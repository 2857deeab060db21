"""``python -m fastclip`` (and the ``fastclip`` console script): ``demo`` and ``bench``.

Each subcommand lives in its own module (``fastclip.demo``, ``fastclip.bench``), which provides
``add_arguments(parser)`` and ``run(args) -> int``; this file only wires them up.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "demo": ("fastclip.demo", "the seed's experiment: loss without clipping vs with each clip"),
    "bench": ("fastclip.bench", "benchmarks against NumPy (and torch) and the memory-bandwidth floor"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastclip", description="fastclip command-line tools")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        mod.add_arguments(p)
        modules[name] = mod
    args = parser.parse_args(argv)
    if args.command not in modules:
        parser.error(f"{args.command!r} is not available in this build")
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
