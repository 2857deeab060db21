"""``python -m fastclip``: which import errors become a message, and which keep their traceback."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
from fastclip import __main__ as cli
from fastclip._bench import suite

RUN_OK = "def add_arguments(parser):\n    parser.add_argument('--x', type=int, default=0)\n\n" \
         "def run(args):\n    return args.x\n"  # fmt: skip


def _command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, module: str, source: str | None) -> None:
    """Register subcommand ``fake`` backed by ``module`` (written to ``tmp_path`` unless ``source`` is None)."""
    if source is not None:
        (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(cli.COMMANDS, "fake", (module, "a test command"))


def test_a_working_command_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _command(monkeypatch, tmp_path, "fc_cmd_ok", RUN_OK)
    assert cli.main(["fake", "--x", "7"]) == 7


def test_an_import_error_inside_a_command_module_propagates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The old __main__ turned this into "'fake' is not available in this build".
    _command(monkeypatch, tmp_path, "fc_cmd_broken", "import fc_no_such_dependency\n" + RUN_OK)
    with pytest.raises(ModuleNotFoundError) as e:
        cli.main(["fake"])
    assert e.value.name == "fc_no_such_dependency"


def test_a_broken_name_import_inside_a_command_module_propagates(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    _command(monkeypatch, tmp_path, "fc_cmd_badname", "from json import no_such_name\n" + RUN_OK)
    with pytest.raises(ImportError, match="no_such_name"):
        cli.main(["fake"])
    with pytest.raises(ImportError, match="no_such_name"):  # and for the other commands too
        cli.main(["demo", "--help"])


def test_a_command_not_in_this_build_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    _command(monkeypatch, tmp_path, "fc_cmd_absent", None)
    with pytest.raises(SystemExit) as e:
        cli.main(["fake"])
    assert e.value.code == 2
    assert "'fake' is not available in this build" in capsys.readouterr().err


def test_an_import_error_while_running_propagates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    src = "def add_arguments(parser):\n    pass\n\ndef run(args):\n    import fc_missing_at_run_time\n"
    _command(monkeypatch, tmp_path, "fc_cmd_runfail", src)
    with pytest.raises(ModuleNotFoundError) as e:
        cli.main(["fake"])
    assert e.value.name == "fc_missing_at_run_time"


def test_a_broken_optional_dependency_propagates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # matplotlib present but failing inside: not "missing", so its traceback is what the user needs
    src = ("def add_arguments(parser):\n    pass\n\ndef run(args):\n"
           "    raise ModuleNotFoundError('No module named matplotlib._c', name='matplotlib._c')\n")  # fmt: skip
    _command(monkeypatch, tmp_path, "fc_cmd_mplbroken", src)
    with pytest.raises(ModuleNotFoundError):
        cli.main(["fake"])


def _tiny_result(*_args: object) -> dict:
    row = {"workload": "tiny", "op": "global", "tensors": 1, "bytes": 4, "floor_s": 1.0,
           "median_s": {"fastclip": 1.0, "numpy": 2.0}, "gb_s": {"fastclip": 1.0}, "ratio_to_floor":
           {"fastclip": 1.0, "numpy": 2.0}, "speedup_vs_numpy": 2.0, "fastclip_peak_extra_bytes": None,
           "norm_rel_err": 0.0}  # fmt: skip
    machine = {"cpu": "test", "cores": 1, "isa": "scalar", "numpy": "0", "rayon_threads": "default"}
    return {"machine": machine, "scale": 1.0, "rows": [row]}


def test_bench_plot_without_matplotlib_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setattr(suite, "run_all", _tiny_result)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` -> ModuleNotFoundError
    out = tmp_path / "b.json"
    assert cli.main(["bench", "--json", str(out), "--plot", str(tmp_path / "b.png")]) == 1
    captured = capsys.readouterr()
    assert "tiny" in captured.out and json.loads(out.read_text())["rows"][0]["workload"] == "tiny"
    assert captured.err.strip() == (
        "fastclip bench: this needs matplotlib, which is not installed: pip install 'fastclip-rs[demo]'"
    )
    assert not (tmp_path / "b.png").exists()


def test_bench_plot_with_matplotlib_draws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(suite, "run_all", _tiny_result)
    assert cli.main(["bench", "--no-progress", "--plot", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
