import json
import math

import pytest

from banray import report
from banray.chain import ChainResult, EnsembleRecord, GenerationRecord
from banray.spec import parse_spec
from conftest import tiny_spec


def record(chain, generation, test_error, status="finished", test_nll=None):
    return GenerationRecord(
        chain=chain, generation=generation, role="teacher" if generation == 0 else "student", arch="cnn",
        objective="ce" if generation == 0 else "ban", status=status, mlflow_run_id=f"run-{chain}-{generation}",
        teacher_checkpoint=None if generation == 0 else f"/ckpt/{chain}/{generation - 1}",
        teacher_run_id=None if generation == 0 else f"run-{chain}-{generation - 1}",
        val_error=test_error, test_error=test_error if status == "finished" else None,
        test_nll=test_nll,
        checkpoint=f"/ckpt/{chain}/{generation}" if status == "finished" else None,
        message=None if status == "finished" else "all 2 trial(s) failed",
    )


def build(spec, chains):
    return report.build(spec, chains, sweep_dir="/out/tiny", tracking_uri="sqlite:///x.db", experiment_id="1",
                        elapsed_s=12.34)


@pytest.fixture
def built():
    spec = parse_spec(tiny_spec(generations=2, chains=3))
    chains = [
        ChainResult(0, [record(0, 0, 0.10), record(0, 1, 0.08), record(0, 2, 0.07)],
                    [EnsembleRecord(2, [1, 2], 0.06, 0.2)], "ens-0"),
        ChainResult(1, [record(1, 0, 0.12), record(1, 1, 0.10), record(1, 2, 0.09)],
                    [EnsembleRecord(2, [1, 2], 0.08, 0.3)], "ens-1"),
        ChainResult(2, [record(2, 0, 0.14), record(2, 1, 0.0, status="failed")], [], None,
                    stopped="no trial of generation 1 finished"),
    ]
    return build(spec, chains)


def test_summary_is_mean_and_sample_std_over_finished_chains(built):
    assert built["columns"] == ["Teacher", "BAN-1", "BAN-2", "Ens*2"]
    assert built["headline"] == "test error" and built["unit"] == "%"
    assert built["summary"]["Teacher"]["mean"] == pytest.approx(12.0)
    assert built["summary"]["Teacher"]["std"] == pytest.approx(2.0)
    assert built["summary"]["BAN-1"] == {"n": 2, "mean": pytest.approx(9.0), "std": pytest.approx(1.41421, rel=1e-4)}
    assert built["summary"]["Ens*2"] == {"n": 2, "mean": pytest.approx(7.0), "std": pytest.approx(1.41421, rel=1e-4)}


def test_table_has_a_row_per_chain_and_marks_failures(built):
    lines = report.table(built).splitlines()
    assert lines[0] == "| Chain | Teacher | BAN-1 | BAN-2 | Ens*2 |"
    assert lines[2] == "| 0 | 10.00 | 8.00 | 7.00 | 6.00 |"
    assert lines[4] == "| 2 | 14.00 | failed | — | — |"
    assert lines[5] == "| mean ± std | 12.00 ± 2.00 | 9.00 ± 1.41 | 8.00 ± 1.41 | 7.00 ± 1.41 |"


def test_files_hold_the_per_generation_records_and_the_plot(built, tmp_path):
    json_path, md_path, png_path = report.write(built, tmp_path)
    loaded = json.loads(json_path.read_text())
    first = loaded["chains"][0]["generations"]
    assert [g["generation"] for g in first] == [0, 1, 2]
    assert first[1]["teacher_checkpoint"] == first[0]["checkpoint"] == "/ckpt/0/0"
    for key in ("val_error", "test_error", "checkpoint", "teacher_checkpoint", "mlflow_run_id"):
        assert key in first[0]
    assert loaded["chains"][0]["ensembles"] == [{"k": 2, "members": [1, 2], "test_error": 0.06, "test_nll": 0.2, "test_ece": None}]
    text = md_path.read_text()
    assert "# banray report: tiny" in text and report.table(built) in text
    assert "Ens*k averages the softmax outputs of the last k student generations" in text
    assert "chain 2 stopped after generation 1: no trial of generation 1 finished" in text
    assert "chain 2 generation 1 failed: all 2 trial(s) failed" in text
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.stat().st_size > 10_000


def test_single_chain_says_there_is_no_spread():
    spec = parse_spec(tiny_spec())
    built = build(spec, [ChainResult(0, [record(0, 0, 0.1), record(0, 1, 0.1)], [], None)])
    assert "| mean ± std | 10.00 | 10.00 |" in report.table(built)
    assert "With one chain there is no spread" in report.markdown(built)


def test_language_models_report_perplexity():
    spec = parse_spec(tiny_spec(data={"dataset": "ptb"}, model={"arch": "lstm_lm"}, search={"metric": "val_nll"}))
    built = build(spec, [ChainResult(0, [record(0, 0, 0.7, test_nll=math.log(120.0)),
                                         record(0, 1, 0.7, test_nll=math.log(110.0))], [], None)])
    assert built["headline"] == "test perplexity"
    assert report.table(built).splitlines()[2] == "| 0 | 120.00 | 110.00 |"
    assert report.caption(built).startswith("Test perplexity on `ptb`")
