"""Run the test suite against the built wheel on every CPython 3.9..3.13 that pyenv has.

``make test-matrix`` (all interpreters found) and ``make test-matrix-ends`` (the lowest and the
highest) build the ``cp39-abi3`` wheel once (``make wheel``) and call this script, which for each
interpreter:

1. creates (once) the virtualenv ``.venv-matrix/<major.minor>`` and installs the test
   dependencies from PyPI (numpy, ml_dtypes, pytest, hypothesis: pip picks the newest release
   with a wheel for that interpreter, e.g. numpy 2.0.x on 3.9);
2. installs the wheel from ``target/wheels`` (``--force-reinstall --no-deps``);
3. runs ``pytest`` in that interpreter from a temporary directory (so neither the source tree's
   ``python/`` nor the current directory is on ``sys.path``), on the repository's ``tests/``, and
   checks that ``fastclip`` was imported from the virtualenv's ``site-packages`` (printed).

Interpreters come from ``pyenv root``/versions (or ``$PYENV_ROOT``, or ``~/.pyenv``): plain CPython
``3.X.Y`` directories, the newest patch release per minor version; free-threaded builds are
skipped (the abi3 wheel does not apply to them). Without pyenv, the interpreter running this
script is the whole matrix. Every interpreter is run even when one fails; the exit status is 1 if
any failed. Arguments after ``--`` go to pytest.

    python scripts/test_matrix.py [--ends] [--python PATH ...] [--wheel-dir DIR] [-- PYTEST_ARGS]
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINORS = range(9, 14)  # CPython 3.9 .. 3.13
DEPS = ["numpy", "ml_dtypes>=0.4", "pytest>=8", "hypothesis>=6"]

#: What runs inside each interpreter: pytest in-process, then proof of which fastclip it tested.
RUNNER = r"""
import os, sys, sysconfig
import pytest

class Where:
    def pytest_terminal_summary(self, terminalreporter):
        mod = sys.modules.get("fastclip")
        path = getattr(mod, "__file__", None)
        terminalreporter.write_line(f"fastclip tested: {path}")

repo, args = sys.argv[1], sys.argv[2:]
import fastclip
site = os.path.realpath(sysconfig.get_paths()["purelib"])
where = os.path.realpath(fastclip.__file__)
print(f"python {sys.version.split()[0]} at {sys.executable}; fastclip {fastclip.__version__} from {where}", flush=True)
if not where.startswith(site + os.sep):
    sys.exit(f"fastclip was imported from {where}, not from the virtualenv's {site}")
rc = pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", repo, "-c", os.path.join(repo, "pyproject.toml"),
                  *args, os.path.join(repo, "tests")], plugins=[Where()])
if os.path.realpath(sys.modules["fastclip"].__file__) != where:
    sys.exit("the tests imported another fastclip than the installed one")
sys.exit(int(rc))
"""


def pyenv_root() -> str | None:
    root = os.environ.get("PYENV_ROOT")
    if not root and shutil.which("pyenv"):
        try:
            root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            root = None
    if not root:
        root = os.path.expanduser("~/.pyenv")
    return root if os.path.isdir(os.path.join(root, "versions")) else None


def probe(python: str) -> tuple[tuple[int, int], bool] | None:
    """``((major, minor), free_threaded)`` of an interpreter, or None if it does not run."""
    code = "import sys, sysconfig; print(sys.version_info[0], sys.version_info[1], sysconfig.get_config_var('Py_GIL_DISABLED') or 0)"  # noqa: E501
    try:
        out = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=60, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return (int(out[0]), int(out[1])), out[2] not in ("0", "None")


def discover() -> list[tuple[str, str]]:
    """``[(label, python)]`` for the newest CPython 3.9..3.13 patch release per minor under pyenv."""
    root = pyenv_root()
    if root is None:
        print("test-matrix: pyenv not found; testing only the current interpreter", flush=True)
        v = sys.version_info
        return [(f"{v[0]}.{v[1]}", sys.executable)]
    best: dict[int, tuple[tuple[int, ...], str]] = {}
    for d in os.listdir(os.path.join(root, "versions")):
        m = re.fullmatch(r"3\.(\d+)\.(\d+)", d)
        if not m or int(m.group(1)) not in MINORS:
            continue
        minor, patch = int(m.group(1)), int(m.group(2))
        python = os.path.join(root, "versions", d, "bin", "python3")
        info = probe(python)
        if info is None:
            print(f"test-matrix: skipping {d}: {python} does not run", flush=True)
            continue
        if info[1]:
            print(f"test-matrix: skipping {d}: free-threaded build (the abi3 wheel does not apply)", flush=True)
            continue
        if minor not in best or best[minor][0] < (patch,):
            best[minor] = ((patch,), python)
    found = [(f"3.{minor}", best[minor][1]) for minor in sorted(best)]
    if not found:
        print("test-matrix: no CPython 3.9..3.13 under pyenv; testing only the current interpreter", flush=True)
        v = sys.version_info
        return [(f"{v[0]}.{v[1]}", sys.executable)]
    return found


def find_wheel(wheel_dir: str) -> str:
    wheels = sorted(glob.glob(os.path.join(wheel_dir, "fastclip_rs-*-cp39-abi3-*.whl")), key=os.path.getmtime)
    if not wheels:
        sys.exit(f"test-matrix: no cp39-abi3 wheel in {wheel_dir}; run `make wheel` first")
    return wheels[-1]


def run(cmd: list[str], **kw) -> None:
    subprocess.run(cmd, check=True, **kw)


def prepare(label: str, python: str, wheel: str, root: str) -> str:
    """The virtualenv for one interpreter, with the deps and the wheel installed; its python."""
    venv = os.path.join(root, label)
    vpy = os.path.join(venv, "bin", "python")
    marker = os.path.join(venv, ".deps")
    if not os.path.exists(vpy) or probe(vpy) is None:
        shutil.rmtree(venv, ignore_errors=True)
        run([python, "-m", "venv", venv])
    want = " ".join(DEPS)
    if not os.path.exists(marker) or open(marker).read() != want:
        run([vpy, "-m", "pip", "install", "-q", "--disable-pip-version-check", *DEPS])
        with open(marker, "w") as fh:
            fh.write(want)
    run([vpy, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--force-reinstall", "--no-deps", wheel])
    return vpy


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ends", action="store_true", help="only the lowest and the highest interpreter found")
    ap.add_argument("--python", action="append", default=[], help="test this interpreter instead (repeatable)")
    ap.add_argument("--wheel-dir", default=os.path.join(REPO, "target", "wheels"))
    ap.add_argument("--venv-root", default=os.path.join(REPO, ".venv-matrix"))
    argv = sys.argv[1:]
    pytest_args: list[str] = []
    if "--" in argv:
        k = argv.index("--")
        argv, pytest_args = argv[:k], argv[k + 1 :]
    args = ap.parse_args(argv)

    if args.python:
        targets = []
        for p in args.python:
            info = probe(p)
            if info is None:
                sys.exit(f"test-matrix: {p} does not run")
            targets.append((f"{info[0][0]}.{info[0][1]}", p))
    else:
        targets = discover()
    if args.ends and len(targets) > 2:
        targets = [targets[0], targets[-1]]
    wheel = find_wheel(args.wheel_dir)
    os.makedirs(args.venv_root, exist_ok=True)
    with open(os.path.join(args.venv_root, ".gitignore"), "w") as fh:
        fh.write("# created by scripts/test_matrix.py\n*\n")
    print(f"test-matrix: {os.path.basename(wheel)} on {', '.join(label for label, _ in targets)}", flush=True)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    results = []
    for label, python in targets:
        t0 = time.monotonic()
        print(f"\n=== Python {label} ({python})", flush=True)
        try:
            vpy = prepare(label, python, wheel, args.venv_root)
            t1 = time.monotonic()
            with tempfile.TemporaryDirectory(prefix=f"fastclip-matrix-{label}-") as tmp:
                rc = subprocess.run([vpy, "-c", RUNNER, REPO, *pytest_args], cwd=tmp, env=env).returncode
        except subprocess.CalledProcessError as e:
            t1 = time.monotonic()
            print(f"test-matrix: setting up Python {label} failed: {e}", flush=True)
            rc = -1
        t2 = time.monotonic()
        results.append((label, rc, t1 - t0, t2 - t1))

    print("\ntest-matrix summary (setup s, tests s):")
    for label, rc, setup, tests in results:
        status = "ok" if rc == 0 else ("setup failed" if rc == -1 else f"FAILED (pytest exit {rc})")
        print(f"  Python {label:5s} {status:24s} {setup:7.1f} {tests:8.1f}")
    return 0 if all(rc == 0 for _, rc, _, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
