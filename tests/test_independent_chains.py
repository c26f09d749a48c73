"""Chains are independent lineages: each its own train/validation split and augmentation stream."""

import numpy as np
import yaml

from banray.catalog.data import load_splits
from banray.records import ChainResult, GenerationRecord
from banray.results import report
from banray.spec import parse_spec
from conftest import tiny_spec

DIGITS = {"dataset": "digits", "val_fraction": 0.2, "seed": 0}


def spec_of(**overrides):
    return parse_spec(tiny_spec(chains=3, data=dict(DIGITS, **overrides)))


def test_each_chain_draws_its_own_split_and_the_test_split_never_moves():
    spec = spec_of()
    seeds = [spec.chain_data(chain).seed for chain in range(3)]
    assert len(set(seeds)) == 3 and spec.data.seed not in seeds
    splits = [load_splits("digits", "", 0.2, seed) for seed in seeds]
    vals = [tuple(s.val.indices.tolist()) for s in splits]
    assert len(set(vals)) == 3  # three different validation splits
    pools = [sorted(s.val.indices.tolist() + s.train.indices.tolist()) for s in splits]
    assert all(pool == pools[0] for pool in pools)  # drawn from the same training pool
    tests = [np.asarray(s.test.labels) for s in splits]
    assert all((t == tests[0]).all() for t in tests)


def test_the_control_arm_and_every_generation_share_their_chains_data():
    spec = spec_of()
    for chain in range(3):
        data = spec.generation_settings(chain, 0, None)["data"]
        assert spec.generation_settings(chain, 0, None, "control")["data"] == data
        assert spec.generation_settings(chain, 1, "/teacher")["data"] == data
        assert data["seed"] == spec.chain_data(chain).seed


def test_shared_split_keeps_one_split_for_every_chain():
    spec = spec_of(shared_split=True)
    assert {spec.chain_data(chain).seed for chain in range(3)} == {0}
    assert spec.spec_hash() != spec_of().spec_hash()  # a different experiment


def record(chain, generation, error):
    return GenerationRecord(chain=chain, generation=generation, role="teacher" if generation == 0 else "student",
                            arch="cnn", objective="ce", status="finished", mlflow_run_id="r", teacher_checkpoint=None,
                            teacher_run_id=None, test_error=error, test_nll=0.1, val_error=error)


def test_the_report_names_each_chains_data_seed_and_what_its_intervals_cover():
    for shared in (False, True):
        spec = spec_of(shared_split=shared)
        chains = [ChainResult(c, [record(c, 0, 0.1 + c / 100), record(c, 1, 0.09)], [], None) for c in range(3)]
        built = report.build(spec, chains, sweep_dir="/out", tracking_uri="sqlite:///x.db", experiment_id="1",
                             elapsed_s=1.0, utilisation=0.5)
        assert [c["data_seed"] for c in built["chains"]] == [spec.chain_data(c).seed for c in range(3)]
        caption = report.caption(built)
        assert ("initialisation and data order only" in caption) == shared
        assert ("each chain's own train/validation split" in caption) == (not shared)


def test_plan_detect_says_when_the_measured_spread_came_from_shared_splits(tmp_path):
    import json

    from banray.commands import plan

    spec = spec_of()
    chains = [ChainResult(c, [record(c, 0, 0.1 + c / 100), record(c, 1, 0.09 + c / 50)], [], None) for c in range(3)]
    built = report.build(spec_of(shared_split=True), chains, sweep_dir="/out", tracking_uri="sqlite:///x.db",
                         experiment_id="1", elapsed_s=1.0, utilisation=0.5)
    folder = tmp_path / "done"
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps(built))
    lines = plan.chains_for_gain(spec, 1.0, str(folder))
    assert any("shared one split" in line and "expect a larger spread" in line for line in lines)
    assert not any("shared one split" in line for line in plan.chains_for_gain(spec_of(shared_split=True), 1.0, str(folder)))


def test_plan_detect_has_no_split_note_where_the_data_seed_changes_nothing(tmp_path):
    import json
    import math

    from banray.commands import plan

    def ptb(shared):
        return parse_spec(tiny_spec(chains=3, data={"dataset": "ptb", "shared_split": shared},
                                    model={"arch": "lstm_lm"}, search={"metric": "val_nll"}))

    chains = [ChainResult(c, [GenerationRecord(**{**record(c, g, 0.7).__dict__, "test_nll": math.log(120 - g - c)})
                              for g in (0, 1)], [], None) for c in range(3)]
    built = report.build(ptb(False), chains, sweep_dir="/out", tracking_uri="sqlite:///x.db", experiment_id="1",
                         elapsed_s=1.0, utilisation=0.5)
    assert report.SHARED_SPLIT not in built["variation"]
    folder = tmp_path / "done"
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps(built))
    lines = plan.chains_for_gain(ptb(True), 1.0, str(folder))  # PTB's fixed files: shared_split changes nothing
    assert not any("shared one split" in line or "drew their own splits" in line for line in lines), lines
