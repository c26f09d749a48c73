"""The DAG scheduler (banray.sweep.dag) on a fake cluster in simulated time, without Ray; one slow test on Ray."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from banray.records import BUDGET_ARM, CONTROL_ARM, SMOOTHING_ARM, control_arm
from banray.sweep.dag import in_thread, run_dag
from conftest import run_python


@dataclass(eq=False)  # compared and hashed by identity, as ObjectRefs are
class Task:
    name: str


class FakeCluster:
    """Each task runs a given number of simulated seconds; `wait` advances the clock to the first one to end."""

    def __init__(self) -> None:
        self.now = 0.0
        self.running: dict[Task, tuple[float, int, object]] = {}  # → (end, submission order, result)
        self.submitted = 0

    def submit(self, name: str, seconds: float, result: object) -> Task:
        task = Task(name)
        self.running[task] = (self.now + seconds, self.submitted, result)
        self.submitted += 1
        return task

    def wait(self, handles: list[Task]) -> tuple[Task, object]:
        assert len(handles) == len(set(handles)) and set(handles) == set(self.running)  # it waits on all it started
        task = min(handles, key=lambda t: self.running[t][:2])  # ties: the first submitted ends first
        self.now, _, result = self.running.pop(task)
        return task, result

    def clock(self) -> float:
        return self.now


def spans_by_group(run):
    return {(s.chain, s.generation): s for s in run.spans}


def test_dag_starts_each_generation_when_its_own_predecessor_ends():
    cluster = FakeCluster()
    lines = []
    run = run_dag(2, 2, launch=lambda c, g, previous: cluster.submit(f"{c}/{g}", 1 if c == 0 else 5, (c, g)),
                  stop_rule=lambda c, results: None, echo=lines.append, wait=cluster.wait, clock=cluster.clock)
    span = spans_by_group(run)
    assert run.results == {0: [(0, 0), (0, 1), (0, 2)], 1: [(1, 0), (1, 1), (1, 2)]}
    assert run.stopped == {} and run.arms == {0: {}, 1: {}}
    assert span[0, 2].start_s < span[1, 1].end_s  # no barrier between the chains' generations
    for c in (0, 1):
        assert span[c, 1].start_s >= span[c, 0].end_s and span[c, 2].start_s >= span[c, 1].end_s
    assert [(s.chain, s.generation, s.start_s, s.end_s) for s in run.spans] == [
        (0, 0, 0, 1), (0, 1, 1, 2), (0, 2, 2, 3), (1, 0, 0, 5), (1, 1, 5, 10), (1, 2, 10, 15),
    ]
    assert run.makespan_s == 15 and abs(run.started_at - time.time()) < 60
    assert lines == [
        "[banray] chain 0 generation 0: started",
        "[banray] chain 1 generation 0: started",
        "[banray] chain 0 generation 0: done after 1 s",
        "[banray] chain 0 generation 1: started",
        "[banray] chain 0 generation 1: done after 1 s",
        "[banray] chain 0 generation 2: started",
        "[banray] chain 0 generation 2: done after 1 s",
        "[banray] chain 1 generation 0: done after 5 s",
        "[banray] chain 1 generation 1: started",
        "[banray] chain 1 generation 1: done after 5 s",
        "[banray] chain 1 generation 2: started",
        "[banray] chain 1 generation 2: done after 5 s",
    ]


def test_each_generation_gets_its_predecessors_result_and_on_done_sees_every_step():
    cluster = FakeCluster()
    teachers, saved = [], []

    def launch(c, g, previous):
        teachers.append((c, g, previous))
        return cluster.submit(f"{c}/{g}", 1, f"c{c}g{g}")

    def on_done(results, stopped, arms):
        saved.append(({c: list(r) for c, r in results.items()}, dict(stopped), {c: dict(a) for c, a in arms.items()}))

    run_dag(1, 2, launch=launch, stop_rule=lambda c, results: None, echo=lambda line: None, on_done=on_done,
            wait=cluster.wait, clock=cluster.clock)
    assert teachers == [(0, 0, None), (0, 1, "c0g0"), (0, 2, "c0g1")]
    assert saved == [({0: ["c0g0"]}, {}, {0: {}}), ({0: ["c0g0", "c0g1"]}, {}, {0: {}}),
                     ({0: ["c0g0", "c0g1", "c0g2"]}, {}, {0: {}})]


def test_dag_stop_rule_ends_a_chain_early():
    cluster = FakeCluster()
    lines = []
    run = run_dag(2, 3, launch=lambda c, g, previous: cluster.submit(f"{c}/{g}", 1, g),
                  stop_rule=lambda c, results: "no gain" if c == 1 and len(results) == 2 else None,
                  echo=lines.append, wait=cluster.wait, clock=cluster.clock)
    assert run.results == {0: [0, 1, 2, 3], 1: [0, 1]}
    assert run.stopped == {1: "no gain"}
    assert "[banray] chain 1 stopped after generation 1: no gain" in lines
    assert "[banray] chain 1 generation 2: started" not in lines


def test_a_stop_after_the_last_generation_is_no_early_stop():
    cluster = FakeCluster()
    lines = []
    run = run_dag(1, 1, launch=lambda c, g, previous: cluster.submit(f"{c}/{g}", 1, g),
                  stop_rule=lambda c, results: "no gain" if len(results) == 2 else None,
                  echo=lines.append, wait=cluster.wait, clock=cluster.clock)
    assert run.results == {0: [0, 1]} and run.stopped == {}
    assert not any("stopped" in line for line in lines)


def test_control_arms_take_only_the_room_the_chains_leave():
    def runs(groups_at_once):
        cluster = FakeCluster()
        lines = []
        run = run_dag(2, 2, launch=lambda c, g, previous: cluster.submit(f"{c}/{g}", 1, g),
                      stop_rule=lambda c, results: None, echo=lines.append,
                      side_arms=(CONTROL_ARM,), launch_arm=lambda c, arm: cluster.submit(f"{c}/{arm}", 1, f"{arm} {c}"),
                      groups_at_once=groups_at_once, wait=cluster.wait, clock=cluster.clock)
        assert run.arms == {0: {CONTROL_ARM: "control 0"}, 1: {CONTROL_ARM: "control 1"}}
        assert run.results == {0: [0, 1, 2], 1: [0, 1, 2]}
        for c in (0, 1):
            assert lines.count(f"[banray] chain {c} control (teacher′): started") == 1
            assert f"[banray] chain {c} control (teacher′): done after 1 s" in lines
        return spans_by_group(run)

    # Two chains fill two group places: each control arm waits until a chain has finished.
    span = runs(groups_at_once=2)
    chains_end = sorted(span[c, 2].end_s for c in (0, 1))
    assert all(span[c, CONTROL_ARM].start_s >= chains_end[0] for c in (0, 1))
    # With room to spare, a control arm starts beside its chain's generation 1.
    span = runs(groups_at_once=4)
    assert all(span[c, CONTROL_ARM].start_s < span[c, 1].end_s for c in (0, 1))
    # A control arm never starts before its chain's generation 0 is done, however much room there is.
    span = runs(groups_at_once=None)
    assert all(span[c, CONTROL_ARM].start_s >= span[c, 0].end_s for c in (0, 1))


def test_every_side_arm_of_a_chain_starts_after_its_generation_0_and_only_those_not_done():
    cluster = FakeCluster()
    lines, launched = [], []

    def launch_arm(c, arm):
        launched.append((c, arm))
        return cluster.submit(f"{c}/{arm}", 3 if arm == BUDGET_ARM else 1, f"c{c}{arm}")

    arms = (CONTROL_ARM, control_arm(1), BUDGET_ARM, SMOOTHING_ARM)
    run = run_dag(2, 1, launch=lambda c, g, previous: cluster.submit(f"{c}/{g}", 1, f"c{c}g{g}"),
                  stop_rule=lambda c, results: None, echo=lines.append, side_arms=arms, launch_arm=launch_arm,
                  arms_done={1: {BUDGET_ARM: "done before"}}, wait=cluster.wait, clock=cluster.clock)
    assert run.arms == {0: {arm: f"c0{arm}" for arm in arms},
                        1: {BUDGET_ARM: "done before", **{arm: f"c1{arm}" for arm in arms if arm != BUDGET_ARM}}}
    assert sorted(launched) == sorted([(0, arm) for arm in arms] + [(1, arm) for arm in arms if arm != BUDGET_ARM])
    span = spans_by_group(run)
    assert all(span[c, arm].start_s >= span[c, 0].end_s for c, arm in launched)
    assert "[banray] chain 0 control (teacher′2): started" in lines
    assert "[banray] chain 0 equal-budget model: done after 3 s" in lines
    assert "[banray] chain 1 label-smoothing model: started" in lines


def test_evaluate_results_replace_the_groups_results():
    cluster = FakeCluster()
    teachers = []

    def launch(c, g, previous):
        teachers.append(previous)
        return cluster.submit(f"{c}/{g}", 1, f"g{g}")

    def evaluate(result):  # slower than a generation: gen 0's evaluation ends after gen 1 and gen 2 are done
        return None if result == "g1" else cluster.submit(f"evaluate {result}", 3, f"{result} evaluated")

    run = run_dag(1, 2, launch=launch, stop_rule=lambda c, results: None, echo=lambda line: None,
                  side_arms=(CONTROL_ARM,), launch_arm=lambda c, arm: cluster.submit(arm, 1, arm), evaluate=evaluate,
                  wait=cluster.wait, clock=cluster.clock)
    assert run.results == {0: ["g0 evaluated", "g1", "g2 evaluated"]}
    assert run.arms == {0: {CONTROL_ARM: "control evaluated"}}
    assert teachers == [None, "g0", "g1"]  # a successor starts beside its teacher's evaluation, not after it
    assert run.makespan_s == 3 + 3  # gen 2 ends at 3, its evaluation 3 s later
    assert [(s.generation, s.end_s) for s in run.spans] == [(0, 1), (1, 2), (CONTROL_ARM, 2), (2, 3)]


def test_a_resumed_dag_goes_on_after_each_chains_last_done_group_and_evaluates_what_was_not():
    cluster = FakeCluster()
    launched, lines = [], []

    def launch(c, g, previous):
        launched.append((c, g, previous))
        return cluster.submit(f"{c}/{g}", 1, f"c{c}g{g}")

    def launch_arm(c, arm):
        launched.append((c, arm, None))
        return cluster.submit(f"{c}/{arm}", 1, f"c{c}{arm}")

    def evaluate(result):  # a result not yet evaluated is a bare string
        return None if result.endswith("+") else cluster.submit(f"evaluate {result}", 1, result + "+")

    run = run_dag(
        5, 2, launch=launch, stop_rule=lambda c, results: None, echo=lines.append,
        done={0: ["c0g0+", "c0g1"], 1: ["c1g0+"], 2: ["c2g0+"], 3: ["c3g0+", "c3g1+", "c3g2+"]},
        stopped={2: "no gain"}, side_arms=(CONTROL_ARM,), launch_arm=launch_arm,
        arms_done={0: {CONTROL_ARM: "c0control"}, 3: {CONTROL_ARM: "c3control+"}},
        evaluate=evaluate, wait=cluster.wait, clock=cluster.clock,
    )
    # Chain 0 goes on with generation 2, chain 1 with 1, chain 4 from 0; chain 2 stopped and chain 3 is done.
    # The control arms not done start at once where generation 0 is done (even for stopped chain 2), chain 4's
    # after its generation 0; evaluated results (+) are not evaluated again, the others are.
    assert launched == [(0, 2, "c0g1"), (1, 1, "c1g0+"), (4, 0, None), (1, CONTROL_ARM, None), (2, CONTROL_ARM, None),
                        (1, 2, "c1g1"), (4, 1, "c4g0"), (4, CONTROL_ARM, None), (4, 2, "c4g1")]
    assert run.results == {0: ["c0g0+", "c0g1+", "c0g2+"], 1: ["c1g0+", "c1g1+", "c1g2+"], 2: ["c2g0+"],
                           3: ["c3g0+", "c3g1+", "c3g2+"], 4: ["c4g0+", "c4g1+", "c4g2+"]}
    assert run.stopped == {2: "no gain"}
    assert run.arms == {c: {CONTROL_ARM: f"c{c}control+"} for c in range(5)}
    assert lines[:5] == [
        "[banray] chain 0 generation 2: started",
        "[banray] chain 1 generation 1: started",
        "[banray] chain 4 generation 0: started",
        "[banray] chain 1 control (teacher′): started",
        "[banray] chain 2 control (teacher′): started",
    ]
    assert {(s.chain, s.generation) for s in run.spans} == {  # only the groups this run started
        (0, 2), (1, 1), (1, 2), (4, 0), (4, 1), (4, 2), (1, CONTROL_ARM), (2, CONTROL_ARM), (4, CONTROL_ARM)}


def test_a_resumed_dag_with_nothing_left_returns_at_once():
    cluster = FakeCluster()
    run = run_dag(1, 1, launch=lambda c, g, previous: pytest.fail("nothing is left to launch"),
                  stop_rule=lambda c, results: None, echo=lambda line: pytest.fail(line), done={0: ["a", "b"]},
                  wait=cluster.wait, clock=cluster.clock)
    assert run.results == {0: ["a", "b"]} and run.spans == [] and run.makespan_s == 0


def test_the_scheduler_imports_and_runs_without_ray():
    script = (
        "import sys\n"
        "from banray.sweep.dag import run_dag\n"
        "handles = []\n"
        "def wait(running):\n"
        "    handles.remove(running[0])\n"
        "    return running[0], running[0][1]\n"
        "def launch(c, g, previous):\n"
        "    handles.append((c, g))\n"
        "    return handles[-1]\n"
        "run = run_dag(1, 1, launch=launch, stop_rule=lambda c, r: None, echo=lambda line: None, wait=wait)\n"
        "assert run.results == {0: [0, 1]}, run.results\n"
        "assert 'ray' not in sys.modules\n"
    )
    done = run_python(script)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_dag_waits_on_groups_in_threads_and_evaluations_on_ray_together(ray_cluster):
    """As the driver runs it: groups in threads of its own, evaluations as calls to a Ray actor."""
    import ray

    def group(chain, generation):
        time.sleep(0.2 if chain == 0 else 3.0)  # chain 0 is fast, chain 1 slow
        return (chain, generation)

    @ray.remote(num_cpus=0)
    def evaluation(result):
        return (*result, "evaluated")

    lines = []
    run = run_dag(2, 2, launch=lambda c, g, previous: in_thread(group, c, g),
                  stop_rule=lambda c, results: None, echo=lines.append,
                  side_arms=(CONTROL_ARM,), launch_arm=lambda c, arm: in_thread(group, c, arm),
                  evaluate=lambda r: evaluation.remote(r).future() if r[1] == 2 else None)
    span = spans_by_group(run)
    assert run.results == {0: [(0, 0), (0, 1), (0, 2, "evaluated")], 1: [(1, 0), (1, 1), (1, 2, "evaluated")]}
    assert run.arms == {0: {CONTROL_ARM: (0, CONTROL_ARM)}, 1: {CONTROL_ARM: (1, CONTROL_ARM)}}
    assert span[0, 2].start_s < span[1, 1].end_s  # no barrier between the chains' generations
    for c in (0, 1):
        assert span[c, 1].start_s >= span[c, 0].end_s and span[c, 2].start_s >= span[c, 1].end_s
    assert "[banray] chain 0 generation 2: started" in lines


def test_a_group_that_fails_in_its_thread_fails_the_dag_with_its_own_error():
    def group(chain, generation):
        if generation == 1:
            raise ValueError(f"chain {chain} cannot go on")
        return (chain, generation)

    with pytest.raises(ValueError, match="chain 0 cannot go on"):
        run_dag(1, 2, launch=lambda c, g, previous: in_thread(group, c, g), stop_rule=lambda c, results: None,
                echo=lambda line: None)


def test_progress_lines_of_groups_running_side_by_side_stay_whole():
    script = (
        "import threading\n"
        "from banray.sweep.progress import say\n"
        "def talk(chain):\n"
        "    for _ in range(2000):\n"
        "        say(f'chain {chain}', 'x' * 50)\n"
        "threads = [threading.Thread(target=talk, args=(chain,)) for chain in range(4)]\n"
        "for thread in threads:\n"
        "    thread.start()\n"
        "for thread in threads:\n"
        "    thread.join()\n"
    )
    done = run_python(script)
    lines = done.stdout.splitlines()
    assert len(lines) == 8000
    broken = [line for line in lines if line.count("[banray]") != 1 or not line.endswith("x" * 50)]
    assert not broken, broken[:3]
