"""A warm host's session (banray.hosts.HostSession): how the worker loop's reports reach the Tune trial
that drives the host, one epoch ahead at most, a checkpoint held until the trial has stored it, and what a
gone trial leaves training stopped at its next report."""

import threading
import time

import pytest

from banray.hosts import HostSession, _Cancelled


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


def test_a_checkpoint_report_waits_until_the_trial_has_stored_it():
    session = HostSession(restored=None)
    report = in_thread(lambda: session.report({"epoch": 3}, "/tmp/folder"))
    assert session.next_report() == ({"epoch": 3}, "/tmp/folder")
    settle()
    assert report["thread"].is_alive()  # the folder must outlive the trial's copy of it
    session.stored.put("file:///storage/checkpoint_000002")
    report["thread"].join(5)
    assert report["result"] == "file:///storage/checkpoint_000002"


@pytest.mark.parametrize("waiting_in", ["hand-over", "stored", "next-report"])
def test_a_cancelled_session_stops_whatever_waits_on_it(waiting_in):
    session = HostSession(restored=None)
    if waiting_in == "hand-over":
        session.report({"epoch": 1}, None)  # nobody takes it: the next report waits to hand over
        waiter = in_thread(lambda: session.report({"epoch": 2}, None))
    elif waiting_in == "stored":
        waiter = in_thread(lambda: session.report({"epoch": 1}, "/tmp/folder"))
    else:
        waiter = in_thread(session.next_report)
    settle()
    assert waiter["thread"].is_alive()
    session.cancelled.set()
    waiter["thread"].join(5)
    assert isinstance(waiter.get("error"), _Cancelled)
    with pytest.raises(_Cancelled):
        session.report({"epoch": 9}, None)
