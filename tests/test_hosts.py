"""A warm host's session (banray.trial.hosts.HostSession): how the worker loop's reports reach the Tune trial
that drives the host, one epoch ahead at most, a checkpoint's files handed over without waiting and its URI
known once the trial has stored it, and what a gone trial leaves training stopped at its next wait."""

import threading
import time
from pathlib import Path

import pytest

from banray.trial.hosts import HostSession, _Cancelled


def in_thread(call):
    """Run `call` in a thread; the returned dict gets its result (or error) when it returns."""
    outcome = {}

    def run():
        try:
            outcome["result"] = call()
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    outcome["thread"] = thread
    return outcome


def settle():
    time.sleep(3 * HostSession.WAIT_S)


def test_a_report_without_a_checkpoint_does_not_wait_for_the_trial():
    session = HostSession(restored=None)
    assert session.report({"epoch": 1}, None) is None
    assert session.next_report() == ({"epoch": 1}, None)


def test_the_loop_trains_at_most_one_epoch_ahead_of_its_trial():
    session = HostSession(restored=None)
    session.report({"epoch": 1}, None)
    second = in_thread(lambda: session.report({"epoch": 2}, None))
    settle()
    assert second["thread"].is_alive()  # epoch 1 is still waiting to be taken
    assert session.next_report() == ({"epoch": 1}, None)
    second["thread"].join(5)
    assert second == {"result": None, "thread": second["thread"]}
    assert session.next_report() == ({"epoch": 2}, None)


def checkpoint_folder(tmp_path, name="epoch"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"weights")
    return folder


def test_a_checkpoint_report_hands_its_files_over_and_returns_before_they_are_stored(tmp_path):
    session = HostSession(restored=None)
    folder = checkpoint_folder(tmp_path)
    uri = session.report({"epoch": 3}, str(folder))  # returns at once: the trial has not even taken it
    assert list(folder.iterdir()) == []  # the loop's own folder is empty, to delete as it likes
    metrics, handed = session.next_report()
    assert metrics == {"epoch": 3} and (Path(handed) / "model.pt").read_bytes() == b"weights"
    assert not uri.done()
    session.stored("file:///storage/checkpoint_000002")
    assert uri.result(timeout=0) == "file:///storage/checkpoint_000002"
    assert not Path(handed).exists()  # stored: the host deletes its copy


def test_stored_uris_reach_their_own_checkpoints_in_order(tmp_path):
    session = HostSession(restored=None)
    first = session.report({"epoch": 1}, str(checkpoint_folder(tmp_path, "one")))
    taken = session.next_report()
    second = session.report({"epoch": 2}, str(checkpoint_folder(tmp_path, "two")))
    session.stored("file:///storage/checkpoint_000000")
    assert first.result(timeout=0) == "file:///storage/checkpoint_000000" and not second.done()
    assert not Path(taken[1]).exists() and Path(session.next_report()[1]).exists()
    session.stored("file:///storage/checkpoint_000001")
    assert second.result(timeout=0) == "file:///storage/checkpoint_000001"


def test_a_cancelled_session_fails_the_uris_it_still_owes_and_deletes_their_files(tmp_path):
    session = HostSession(restored=None)
    uri = session.report({"epoch": 1}, str(checkpoint_folder(tmp_path)))
    _, handed = session.next_report()
    session.cancel()
    with pytest.raises(_Cancelled):
        uri.result(timeout=5)
    assert not Path(handed).exists()
    session.stored("file:///storage/late")  # a trial answering after it was cancelled changes nothing


@pytest.mark.parametrize("waiting_in", ["hand-over", "stored", "next-report"])
def test_a_cancelled_session_stops_whatever_waits_on_it(waiting_in, tmp_path):
    session = HostSession(restored=None)
    if waiting_in == "hand-over":
        session.report({"epoch": 1}, None)  # nobody takes it: the next report waits to hand over
        waiter = in_thread(lambda: session.report({"epoch": 2}, None))
    elif waiting_in == "stored":
        uri = session.report({"epoch": 1}, str(checkpoint_folder(tmp_path)))
        waiter = in_thread(lambda: uri.result())
    else:
        waiter = in_thread(session.next_report)
    settle()
    assert waiter["thread"].is_alive()
    session.cancel()
    waiter["thread"].join(5)
    assert isinstance(waiter.get("error"), _Cancelled)
    with pytest.raises(_Cancelled):
        session.report({"epoch": 9}, None)
