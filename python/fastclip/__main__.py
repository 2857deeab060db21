"""``python -m fastclip`` (and the ``fastclip`` console script): ``demo`` and ``bench``.

Each subcommand lives in its own module (``fastclip.demo``, ``fastclip.bench``), which provides
``add_arguments(parser)`` and ``run(args) -> int``; this file only wires them up.

Errors: a subcommand whose module is not in this build is refused with a usage error; an import
error *inside* a subcommand's module, or raised while it runs, propagates with its traceback.
The one exception is an optional dependency (:data:`OPTIONAL`) missing for an option that needs
it (``--plot`` without matplotlib): that gives one line saying what to install, and exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

COMMANDS = {
    "demo": ("fastclip.demo", "the seed's experiment: loss without clipping vs with each clip"),
    "bench": ("fastclip.bench", "benchmarks against NumPy (and torch) and the memory-bandwidth floor"),
}

#: Optional dependencies some options need, with what to install.
OPTIONAL = {"matplotlib": "pip install 'fastclip-rs[demo]'"}


def _shipped(module: str) -> bool:
    """Whether ``module`` is part of this installation (a missing file, not a failing import)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastclip", description="fastclip command-line tools")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if not _shipped(module):
            continue
        mod = importlib.import_module(module)  # an ImportError inside the module is a bug: let it show
        mod.add_arguments(p)
        modules[name] = mod
    args = parser.parse_args(argv)
    if args.command not in modules:
        parser.error(f"{args.command!r} is not available in this build")
    try:
        return int(modules[args.command].run(args) or 0)
    except ModuleNotFoundError as e:
        if e.name not in OPTIONAL:
            raise
        print(f"fastclip {args.command}: this needs {e.name}, which is not installed: {OPTIONAL[e.name]}",
              file=sys.stderr)  # fmt: skip
        return 1


if __name__ == "__main__":
    sys.exit(main())
