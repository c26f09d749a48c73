"""A sweep's start: the driver's heavy modules are imported while Ray starts, not before."""

import subprocess
import sys
import threading

import pytest

from banray import sweep


def test_importing_the_sweeps_start_leaves_the_drivers_modules_for_later():
    script = (
        "import sys\n"
        "import banray.sweep\n"
        "early = [m for m in ('banray.driver', 'mlflow', 'ray.tune', 'ray.train', 'scipy', 'matplotlib') "
        "if m in sys.modules]\n"
        "assert not early, early\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_drivers_modules_import_in_another_thread_while_this_one_connects(tmp_path, monkeypatch):
    (tmp_path / "probe_module.py").write_text("import threading\nTHREAD = threading.current_thread().name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    connected = []
    monkeypatch.setattr(sweep, "connect", lambda *args: connected.append((threading.current_thread().name, args)) or True)
    assert sweep.connect_importing(("probe_module",), "ADDR", {"A": "1"}, False) is True
    assert connected == [(threading.main_thread().name, ("ADDR", {"A": "1"}, False))]
    assert sys.modules["probe_module"].THREAD.startswith("banray-imports")


def test_a_module_that_fails_to_import_fails_the_start(tmp_path, monkeypatch):
    (tmp_path / "broken_module.py").write_text("raise ImportError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sweep, "connect", lambda *args: True)
    with pytest.raises(ImportError, match="broken on purpose"):
        sweep.connect_importing(("broken_module",), None, {}, False)


def test_the_drivers_modules_exist():
    for name in sweep.DRIVER_MODULES:
        __import__(name)
