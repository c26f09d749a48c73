"""The paper's experiments in miniature on a real Ray cluster: a DenseNet-BC teacher with a WRN student
on generated CIFAR files (with Ens*2), and the PTB language-model task with BAN+L."""

import json
from pathlib import Path
import math

import pytest
from ray.train import Checkpoint

import fakedata
from banray.spec import parse_spec
from banray.sweep import start as sweep
from conftest import tiny_spec

pytestmark = pytest.mark.slow


def test_densenet_teacher_wrn_student_on_cifar_with_ensemble(ray_cluster, tmp_path):
    fakedata.write_cifar10(tmp_path / "data")
    spec = parse_spec(tiny_spec(
        name="cifar-cross", storage=str(tmp_path / "runs"),
        data={"dataset": "cifar10", "root": str(tmp_path / "data"), "val_fraction": 0.2},
        model={"arch": "densenet_bc", "kwargs": {"depth": 10, "growth_rate": 4}},
        student={"arch": "wrn", "kwargs": {"depth": 10, "widen_factor": 1}},
        train={"epochs": 1, "batch_size": 50}, search={"trials": 1}, ensembles={"include_teacher": True},
    ))
    result = sweep.run(spec, echo=lambda line: None)
    report = json.loads((Path(result.sweep_dir) / "report.json").read_text())
    assert report["columns"] == ["Teacher", "BAN-1", "Ens*2"]
    (chain,) = report["chains"]
    teacher, student = chain["generations"]
    assert (teacher["arch"], student["arch"]) == ("densenet_bc", "wrn")
    assert [e["members"] for e in chain["ensembles"]] == [[0, 1]]
    assert 0 <= chain["ensembles"][0]["test_error"] <= 1
    metadata = Checkpoint(student["checkpoint"]).get_metadata()
    assert metadata["arch"] == "wrn" and metadata["teacher"]["arch"] == "densenet_bc"  # rebuilt from metadata
    assert (Path(result.sweep_dir) / "report.png").stat().st_size > 10_000


def test_ptb_language_model_reports_perplexity(ray_cluster, tmp_path):
    fakedata.write_ptb(tmp_path / "ptb")
    spec = parse_spec(tiny_spec(
        name="ptb-tiny", storage=str(tmp_path / "runs"),
        data={"dataset": "ptb", "root": str(tmp_path / "ptb")},
        model={"arch": "lstm_lm", "kwargs": {"hidden": 32, "dropout": 0.1}},
        train={"epochs": 2, "batch_size": 8, "lr": 1.0, "momentum": 0.0, "bptt": 10, "grad_clip": 5.0,
               "lr_schedule": "plateau", "lr_gamma": 0.25},
        distill={"objective": "ban+l"}, search={"trials": 1, "metric": "val_nll"},
    ))
    lines = []
    result = sweep.run(spec, echo=lines.append)
    report = result.report
    assert report["headline"] == "test perplexity" and report["columns"] == ["Teacher", "BAN-1"]
    teacher, student = report["chains"][0]["generations"]
    assert student["objective"] == "ban+l" and student["teacher_checkpoint"] == teacher["checkpoint"]
    for record, column in ((teacher, "Teacher"), (student, "BAN-1")):
        perplexity = math.exp(record["test_nll"])
        assert 1 < perplexity < 41  # below the 41-word vocabulary's uniform perplexity: it learned
        assert report["rows"]["0"][column] == pytest.approx(perplexity)
    assert any(line.startswith("Test perplexity on `ptb`") for line in lines)
