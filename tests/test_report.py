import json

import pytest

from banray import report
from banray.chain import GenerationRecord
from banray.spec import parse_spec
from conftest import tiny_spec


def record(chain, generation, test_error, status="finished"):
    return GenerationRecord(
        chain=chain, generation=generation, role="teacher" if generation == 0 else "student", arch="cnn",
        objective="ce" if generation == 0 else "ban", status=status, mlflow_run_id=f"run-{chain}-{generation}",
        teacher_checkpoint=None if generation == 0 else f"/ckpt/{chain}/{generation - 1}",
        teacher_run_id=None if generation == 0 else f"run-{chain}-{generation - 1}",
        val_error=test_error, test_error=test_error if status == "finished" else None,
        checkpoint=f"/ckpt/{chain}/{generation}" if status == "finished" else None,
        message=None if status == "finished" else "all 2 trial(s) failed",
    )


@pytest.fixture
def built():
    spec = parse_spec(tiny_spec(generations=2, chains=3))
    chains = [
        [record(0, 0, 0.10), record(0, 1, 0.08), record(0, 2, 0.07)],
        [record(1, 0, 0.12), record(1, 1, 0.10), record(1, 2, 0.09)],
        [record(2, 0, 0.14), record(2, 1, 0.0, status="failed")],
    ]
    return report.build(spec, chains, sweep_dir="/out/tiny", tracking_uri="sqlite:///x.db", experiment_id="1",
                        elapsed_s=12.34)


def test_summary_is_mean_and_sample_std_over_finished_chains(built):
    assert built["columns"] == ["Teacher", "BAN-1", "BAN-2"]
    assert built["summary"]["Teacher"]["mean"] == pytest.approx(0.12)
    assert built["summary"]["Teacher"]["std"] == pytest.approx(0.02)
    assert built["summary"]["BAN-1"] == {"n": 2, "mean": pytest.approx(0.09), "std": pytest.approx(0.0141421, rel=1e-4)}


def test_table_has_a_row_per_chain_and_marks_failures(built):
    lines = report.table(built).splitlines()
    assert lines[0] == "| Chain | Teacher | BAN-1 | BAN-2 |"
    assert lines[2] == "| 0 | 10.00 | 8.00 | 7.00 |"
    assert lines[4] == "| 2 | 14.00 | failed | — |"
    assert lines[5] == "| mean ± std | 12.00 ± 2.00 | 9.00 ± 1.41 | 8.00 ± 1.41 |"


def test_files_hold_the_per_generation_records(built, tmp_path):
    json_path, md_path = report.write(built, tmp_path)
    loaded = json.loads(json_path.read_text())
    first = loaded["chains"][0]["generations"]
    assert [g["generation"] for g in first] == [0, 1, 2]
    assert first[1]["teacher_checkpoint"] == first[0]["checkpoint"] == "/ckpt/0/0"
    for key in ("val_error", "test_error", "checkpoint", "teacher_checkpoint", "mlflow_run_id"):
        assert key in first[0]
    text = md_path.read_text()
    assert "# banray report: tiny" in text and report.table(built) in text
    assert "chain 2 stopped at generation 1: all 2 trial(s) failed" in text


def test_single_chain_says_there_is_no_spread():
    spec = parse_spec(tiny_spec())
    built = report.build(spec, [[record(0, 0, 0.1), record(0, 1, 0.1)]], sweep_dir="/o", tracking_uri="u",
                         experiment_id="1", elapsed_s=1)
    assert "| mean ± std | 10.00 | 10.00 |" in report.table(built)
    assert "With one chain there is no spread" in report.markdown(built)
