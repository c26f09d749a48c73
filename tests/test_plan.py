"""`banray plan`'s chain count: warnings for too few chains and the chains needed to detect a gain."""

import json

import pytest

from banray.commands import plan
from banray.spec import parse_spec
from conftest import one_error_line, tiny_spec


def test_too_few_chains_are_warned_about():
    assert "no claim" in plan.describe(parse_spec(tiny_spec(chains=1)))[-1]
    assert plan.chain_warnings(3) == [(
        "Warning: with 3 chains the signed-rank test cannot reach p < 0.05 (its smallest p is 2/2^3 = 0.25; "
        "it needs 6 chains), so a verdict would rest on the t interval alone"
    )]
    assert plan.chain_warnings(6) == []


def test_chains_for_a_gain_without_a_report_tabulate_spreads():
    lines = plan.chains_for_gain(parse_spec(tiny_spec()), 0.5)
    # sd = gain → 10 chains and sd = 2 × gain → 34 chains: G*Power's paired-t numbers for effect sizes 1 and 0.5.
    assert "sd 0.5 → 10, sd 1 → 34" in lines[1]
    assert "give a finished sweep with --from-report" in lines[1]
    assert "0.8–1.7 points" in lines[2]


def test_chains_for_a_gain_from_a_finished_sweep(tmp_path):
    # BAN-1 − Teacher in points: -0.5, -1.5, -1.0 → sd 0.5; Teacher′ − Teacher: +1, -1, 0 → sd 1.
    rows = {
        "0": {"Teacher": 2.0, "BAN-1": 1.5, "Teacher′": 3.0},
        "1": {"Teacher": 3.0, "BAN-1": 1.5, "Teacher′": 2.0},
        "2": {"Teacher": 2.5, "BAN-1": 1.5, "Teacher′": 2.5},
    }
    folder = tmp_path / "done"
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps({"dataset": "synthetic", "columns": ["Teacher", "BAN-1", "Teacher′"],
                                                    "rows": rows}))
    lines = plan.chains_for_gain(parse_spec(tiny_spec(chains=12)), 0.5, str(folder))
    assert lines[1] == f"  from {folder} (synthetic, 3 chain(s)):"
    # Upper 80% bounds: sd × sqrt(2 / 0.446287), 0.446287 the 20% quantile of χ²(2).
    assert lines[2].startswith("    sd of BAN-1 − Teacher 0.50 over 3 chains → 10 chains; at the sd's 80% upper bound 1.06")
    assert lines[3].startswith("    sd of Teacher′ − Teacher 1.00 over 3 chains → 34 chains; at the sd's 80% upper bound 2.12")
    assert lines[4].startswith("  this spec runs 12 chain(s); 34 needed by the measured spread")
    assert lines[4].endswith("too few: it would detect 0.5 points of test error less than 80% of the time")


def test_an_unreadable_report_fails_clearly(tmp_path):
    with pytest.raises(plan.PlanCheckFailed, match="--from-report: cannot read .*nothing/report.json"):
        plan.chains_for_gain(parse_spec(tiny_spec()), 0.5, str(tmp_path / "nothing"))
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(plan.PlanCheckFailed, match="is not a banray report.json"):
        plan.chains_for_gain(parse_spec(tiny_spec()), 0.5, str(tmp_path / "other.json"))


@pytest.mark.parametrize("spec, arguments, expected", [
    (tiny_spec(), ["--from-report", "x"], "error: --from-report needs --detect GAIN"),
    (tiny_spec(), ["--detect", "0.5", "--from-report", "{tmp}/nothing"],
     "error: --from-report: cannot read {tmp}/nothing/report.json"),
    (tiny_spec(model={"arch": "wrn", "kwargs": {"depth": 27, "widen_factor": 1}}), ["--calibrate", "1"],
     "error: model.kwargs: wrn cannot be built with {'depth': 27, 'widen_factor': 1}: wrn depth must be 6n + 4"),
    (tiny_spec(student={"arch": "preact_resnet", "kwargs": {"depth": 21}}), ["--calibrate", "1"],
     "error: student.kwargs: preact_resnet cannot be built with {'depth': 21}"),
    (tiny_spec(model={"arch": "resnet1d"}), ["--calibrate", "1"],
     "error: model: resnet1d with {} cannot take synthetic's input of shape (1, 8, 8)"),
], ids=["from-report-without-detect", "unreadable-report", "model-cannot-be-built", "student-cannot-be-built",
        "model-cannot-take-the-input"])
def test_bad_input_to_plan_exits_2_with_one_line(tmp_path, monkeypatch, spec, arguments, expected):
    import yaml
    from click.testing import CliRunner

    from banray.commands.cli import cli

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**spec, "storage": str(tmp_path / "runs")}))
    before = sorted(tmp_path.rglob("*"))
    result = CliRunner().invoke(cli, ["plan", str(path), *(a.replace("{tmp}", str(tmp_path)) for a in arguments)])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""  # nothing planned from bad input
    one_error_line(result.stderr, expected.replace("{tmp}", str(tmp_path)))
    assert sorted(tmp_path.rglob("*")) == before
