"""A sweep's start: the driver's heavy modules are imported while Ray starts, not before."""

import threading

import pytest

from banray import sweep
from conftest import run_python


def test_importing_the_sweeps_start_leaves_the_drivers_modules_for_later():
    script = (
        "import sys\n"
        "import banray.sweep\n"
        "early = [m for m in ('banray.driver', 'mlflow', 'ray.tune', 'ray.train', 'scipy', 'matplotlib') "
        "if m in sys.modules]\n"
        "assert not early, early\n"
    )
    done = run_python(script)
    assert done.returncode == 0, done.stderr


def test_the_drivers_imports_run_in_another_thread_while_this_one_connects(monkeypatch):
    connected, imported = [], []
    monkeypatch.setattr(sweep, "connect", lambda *args: connected.append((threading.current_thread().name, args)) or True)
    assert sweep.connect_while(lambda: imported.append(threading.current_thread().name), "ADDR", {"A": "1"}, False)
    assert connected == [(threading.main_thread().name, ("ADDR", {"A": "1"}, False))]
    assert len(imported) == 1 and imported[0].startswith("banray-imports")


def test_a_module_that_fails_to_import_fails_the_start(tmp_path, monkeypatch):
    (tmp_path / "broken_module.py").write_text("raise ImportError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sweep, "connect", lambda *args: True)
    with pytest.raises(ImportError, match="broken on purpose"):
        sweep.connect_while(lambda: __import__("broken_module"), None, {}, False)


def test_the_driver_and_mlflows_store_are_imported_by_import_driver():
    script = (
        "import sys\n"
        "from banray import sweep\n"
        "sweep.import_driver()\n"
        "missing = [m for m in ('banray.driver', 'mlflow', 'mlflow.store.tracking.sqlalchemy_store', 'ray.tune') "
        "if m not in sys.modules]\n"
        "assert not missing, missing\n"
    )
    done = run_python(script)
    assert done.returncode == 0, done.stderr


def test_the_evaluations_runner_imports_neither_the_reports_statistics_nor_its_plots():
    """The runner starts beside the first generation's trials, on the cores they train on."""
    from banray.driver import EVALUATION_MODULES

    script = (
        "import importlib, sys\n"
        f"for module in {EVALUATION_MODULES!r}:\n"
        "    importlib.import_module(module)\n"
        "heavy = [m for m in ('banray.report', 'banray.stats', 'scipy.stats', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = run_python(script)
    assert done.returncode == 0, done.stderr
