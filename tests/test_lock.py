"""One sweep per folder: the lock beside the sweep folder (a file lock on local disk, a lease object on a
real S3-compatible server), without Ray."""

import json
import subprocess
import sys
import time

import boto3
import pytest
from conftest import REPO
from ray.train import Checkpoint

from banray.storage import SweepStorage
from banray.sweep import lock


def test_a_second_holder_is_refused_and_told_who_holds_it(tmp_path):
    storage = SweepStorage(str(tmp_path / "runs"), "tiny")
    with lock.hold(storage):
        lock_file = tmp_path / "runs" / ".tiny.lock"
        assert json.loads(lock_file.read_text())["pid"] > 0
        with pytest.raises(lock.SweepLocked) as refused:
            with lock.hold(SweepStorage(str(tmp_path / "runs"), "tiny")):
                pytest.fail("two holders at once")
        message = str(refused.value)
        assert message.startswith(f"storage: {storage.uri} is in use by another sweep (pid ")
        assert "\n" not in message
        with lock.hold(SweepStorage(str(tmp_path / "runs"), "other")):  # another name is another folder
            pass
    # Let go: the lock file and the folders made for it are gone, and the next sweep takes it.
    assert not (tmp_path / "runs").exists()
    with lock.hold(storage):
        pass


def test_a_dead_holders_lock_file_does_not_block(tmp_path):
    (tmp_path / ".tiny.lock").write_text(json.dumps({"pid": 999999, "user": "x", "host": "y", "since": "then"}))
    with lock.hold(SweepStorage(str(tmp_path), "tiny")):  # no process holds the OS lock on it any more
        assert json.loads((tmp_path / ".tiny.lock").read_text())["pid"] != 999999


@pytest.fixture
def quick_lease(monkeypatch):
    monkeypatch.setattr(lock, "SETTLE_S", 0.05)
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.1)


def lease(key):
    return json.loads(boto3.client("s3").get_object(Bucket="banray", Key=key)["Body"].read())


def keys(prefix):
    """The objects under `prefix`, less the empty folder markers pyarrow leaves where it deleted a folder's
    last object."""
    found = boto3.client("s3").list_objects_v2(Bucket="banray", Prefix=prefix).get("Contents", [])
    return [o["Key"] for o in found if not (o["Key"].endswith("/") and o["Size"] == 0)]


def test_an_s3_lease_refuses_a_second_sweep_and_is_renewed(s3_endpoint, quick_lease):
    storage = SweepStorage("s3://banray/leases", "tiny")
    with lock.hold(storage):
        first = lease("leases/.tiny.lease")
        with pytest.raises(lock.SweepLocked, match=r"is in use by another sweep \(pid \d+ of "):
            with lock.hold(SweepStorage("s3://banray/leases", "tiny")):
                pytest.fail("two holders at once")
        time.sleep(0.5)
        renewed = lease("leases/.tiny.lease")
        assert renewed["token"] == first["token"] and renewed["heartbeat"] > first["heartbeat"]
    assert keys("leases/") == []  # let go: the lease is deleted


def test_a_stale_s3_lease_is_taken_over(s3_endpoint, quick_lease):
    stale = {"pid": 1, "user": "gone", "host": "elsewhere", "since": "long ago", "token": "old",
             "heartbeat": time.time() - lock.STALE_S - 1}
    boto3.client("s3").put_object(Bucket="banray", Key="stale/.tiny.lease", Body=json.dumps(stale).encode())
    with lock.hold(SweepStorage("s3://banray/stale", "tiny")):
        assert lease("stale/.tiny.lease")["token"] != "old"
    assert keys("stale/") == []


def test_a_lease_taken_over_meanwhile_is_never_written_over(s3_endpoint, quick_lease):
    """A holder that finds someone else's lease (it stalled past STALE_S) stops renewing and leaves it."""
    with lock.hold(SweepStorage("s3://banray/stolen", "tiny")):
        thief = {**lease("stolen/.tiny.lease"), "token": "thief", "heartbeat": time.time()}
        boto3.client("s3").put_object(Bucket="banray", Key="stolen/.tiny.lease", Body=json.dumps(thief).encode())
        time.sleep(0.4)
        assert lease("stolen/.tiny.lease")["token"] == "thief"
    assert lease("stolen/.tiny.lease")["token"] == "thief"


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_second_sweep_on_the_same_folder_is_refused(ray_cluster, tracking_server, tmp_path, where):
    """Two real drivers on one folder: the second gets one line naming the first, which finishes intact."""
    from conftest import tiny_spec
    from servers import wait_until
    from test_faults import finish, start_driver  # noqa: the same driver processes as the fault tests

    if where == "local":
        storage, tracking = str(tmp_path / "runs"), {}
        locked = (tmp_path / "runs" / ".twice.lock").exists
    else:
        storage, tracking = f"s3://banray/twice-{tmp_path.name}", {"uri": tracking_server}
        locked = lambda: f"twice-{tmp_path.name}/.twice.lease" in keys(f"twice-{tmp_path.name}/")  # noqa: E731
    spec = tiny_spec(name="twice", storage=storage, tracking=tracking, search={"trials": 1})
    first, log = start_driver(spec, tmp_path, ray_cluster)
    wait_until(locked, 120, "the first sweep's lock")

    second = subprocess.run([sys.executable, "-m", "banray", "sweep", str(tmp_path / "twice.yaml"), "--address",
                             ray_cluster], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert second.returncode == 2, second.stderr
    assert second.stdout == ""
    (line,) = second.stderr.splitlines()
    assert line.startswith(f"error: storage: {storage}/twice is in use by another sweep (pid {first.pid} of "), line

    output = finish(first, log)
    assert "| Chain | Teacher | BAN-1 |" in output
    folder = SweepStorage(storage, "twice")
    state = json.loads(folder.read_text("state.json"))
    assert state["finished"] and [g["status"] for g in state["chains"]["0"]["generations"]] == ["finished"] * 2
    report = json.loads(folder.read_text("report.json"))
    for generation in report["chains"][0]["generations"]:
        assert Checkpoint(generation["checkpoint"]).get_metadata()["sweep"] == "twice"  # no checkpoint lost
    assert not locked()  # the first let go when it ended
