"""A sweep's start and end: the driver's heavy modules are imported while Ray starts, not before; a local
cluster stops without waiting on its autoscaler monitor."""

import json
import threading

import pytest

from banray.sweep import start as sweep
from conftest import run_python


def test_importing_the_sweeps_start_leaves_the_drivers_modules_for_later():
    script = (
        "import sys\n"
        "import banray.sweep.start\n"
        "early = [m for m in ('banray.sweep.driver', 'mlflow', 'ray.tune', 'ray.train', 'scipy', 'matplotlib') "
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
        "from banray.sweep import start as sweep\n"
        "sweep.import_driver()\n"
        "missing = [m for m in ('banray.sweep.driver', 'mlflow', 'mlflow.store.tracking.sqlalchemy_store', 'ray.tune') "
        "if m not in sys.modules]\n"
        "assert not missing, missing\n"
    )
    done = run_python(script)
    assert done.returncode == 0, done.stderr


def test_the_evaluations_runner_imports_neither_the_reports_statistics_nor_its_plots():
    """The runner starts beside the first generation's trials, on the cores they train on."""
    from banray.sweep.driver import EVALUATION_MODULES

    script = (
        "import importlib, sys\n"
        f"for module in {EVALUATION_MODULES!r}:\n"
        "    importlib.import_module(module)\n"
        "heavy = [m for m in ('banray.results.report', 'banray.results.stats', 'scipy.stats', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = run_python(script)
    assert done.returncode == 0, done.stderr


def test_a_local_cluster_stops_its_monitor_first_and_leaves_no_process():
    """disconnect() kills the monitor while the GCS is still up (with the GCS gone, the monitor's SIGTERM
    handler waits a second on it), then stops the rest: every process of the cluster is gone after."""
    script = (
        "import json, ray, ray._private.node as node_module\n"
        "from banray import ray_internals\nfrom banray.sweep import start as sweep\n"
        "def alive(pid):  # neither gone nor a zombie\n"
        "    try:\n"
        "        return open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[0] != 'Z'\n"
        "    except OSError:\n"
        "        return False\n"
        "assert sweep.connect(None, {}, False)\n"
        "node = ray_internals.started_head_node()\n"
        "pids = [info.process.pid for infos in node.all_processes.values() for info in infos]\n"
        "gcs = node.all_processes['gcs_server'][0].process.pid\n"
        "killed = []\n"
        "kill = node_module.Node._kill_process_type\n"
        "def spy(self, kind, *args, **kwargs):\n"
        "    killed.append((kind, alive(gcs)))\n"
        "    return kill(self, kind, *args, **kwargs)\n"
        "node_module.Node._kill_process_type = spy\n"
        "sweep.disconnect()\n"
        "print(json.dumps({'killed': killed, 'left': [pid for pid in pids if alive(pid)]}))\n"
    )
    done = run_python(script)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    kinds = [kind for kind, _ in outcome["killed"]]
    assert kinds[0] == "monitor" and outcome["killed"][0][1], outcome  # killed while the GCS was up
    assert "gcs_server" in kinds and outcome["left"] == [], outcome
