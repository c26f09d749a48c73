"""The MLflow layout against a real `mlflow server`: the run tree, tags, params, metrics, the registered
model with its aliases, loading @best, and moving @best by hand with `banray promote`."""

import mlflow
import pytest
import torch
from click.testing import CliRunner

from banray import checkpoint, sweep
from banray.cli import cli
from banray.spec import parse_spec
from conftest import REPO, tiny_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tracked(ray_cluster, tracking_server, tmp_path_factory):
    spec = parse_spec(tiny_spec(name="tracked", storage=str(tmp_path_factory.mktemp("runs")),
                                tracking={"uri": tracking_server}, train={"epochs": 2, "batch_size": 32}))
    return spec, sweep.run(spec, echo=lambda line: None)


def test_run_tree_tags_params_and_metrics(tracked, tracking_server):
    spec, result = tracked
    client = mlflow.MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name("tracked")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    teacher, student = result.report["chains"][0]["generations"]
    assert set(runs) == {"chain0-gen0", "chain0-gen1", "summary"} | {f"chain0-gen{g}-trial{t}" for g in (0, 1) for t in (0, 1)}
    for generation, record, role in ((0, teacher, "teacher"), (1, student, "student")):
        parent = runs[f"chain0-gen{generation}"]
        assert parent.info.run_id == record["mlflow_run_id"] and parent.info.status == "FINISHED"
        assert {k: parent.data.tags[f"banray.{k}"] for k in ("sweep", "chain", "generation", "role")} == {
            "sweep": "tracked", "chain": "0", "generation": str(generation), "role": role}
        assert parent.data.metrics["best_val_error"] == pytest.approx(record["val_error"])
        assert parent.data.metrics["test_error"] == pytest.approx(record["test_error"])
        for t in (0, 1):
            child = runs[f"chain0-gen{generation}-trial{t}"]
            assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert child.data.params["train.lr"] == "0.05" and child.data.params["model.kwargs.width"] == "8"
            term = "loss/ce" if generation == 0 else "loss/teacher_ce"
            for metric in (term, "val_error", "val_nll"):
                assert [m.step for m in client.get_metric_history(child.info.run_id, metric)] == [1, 2]
    assert runs["chain0-gen1"].data.tags["banray.teacher_run_id"] == teacher["mlflow_run_id"]
    assert {a.path for a in client.list_artifacts(runs["summary"].info.run_id)} == {
        "spec.yaml", "report.json", "report.md", "report.png"}


def test_registered_versions_aliases_and_best_loads(tracked, tracking_server):
    spec, result = tracked
    client = mlflow.MlflowClient(tracking_server)
    teacher, student = result.report["chains"][0]["generations"]
    aliases = result.report["mlflow"]["registered_model"]["aliases"]
    assert set(aliases) == {"best", "gen-0", "gen-1", "chain0-gen-0", "chain0-gen-1"}
    best_generation = 1 if student["val_error"] < teacher["val_error"] else 0  # ties go to the earlier one
    assert aliases["best"] == aliases[f"gen-{best_generation}"]
    for alias, version in aliases.items():
        assert client.get_model_version_by_alias("tracked", alias).version == version
    mv = client.get_model_version_by_alias("tracked", "gen-1")
    assert mv.tags["banray.generation"] == "1" and mv.tags["banray.run_id"] == student["mlflow_run_id"]

    mlflow.set_tracking_uri(tracking_server)
    try:
        loaded = mlflow.pytorch.load_model("models:/tracked@best").eval()
    finally:
        mlflow.set_tracking_uri(None)
    best_record = (teacher, student)[best_generation]
    original, _ = checkpoint.load(best_record["checkpoint"])
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), original.eval()(x))


def test_promote_moves_best_and_records_who(tracked, tracking_server):
    result = CliRunner().invoke(cli, ["promote", "tracked", "--generation", "0", "--tracking-uri", tracking_server])
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(tracking_server)
    best = client.get_model_version_by_alias("tracked", "best")
    assert best.version == client.get_model_version_by_alias("tracked", "gen-0").version
    assert best.tags["banray.promoted_by"] and best.tags["banray.promoted_at"].startswith("20")
    missing = CliRunner().invoke(cli, ["promote", "tracked", "--generation", "7", "--tracking-uri", tracking_server])
    assert missing.exit_code == 2 and "has no alias @gen-7" in missing.output


def test_generations_and_their_validation_error_show_in_the_mlflow_ui(tracked, tracking_server):
    """Headless Debian Chromium on the real server's UI; screenshots go to test-artifacts/."""
    import os
    import shutil

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("BANRAY_REQUIRE_BROWSER"):
            pytest.fail("chromium and chromedriver are required here (.ci/run installs them)")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    spec, result = tracked
    teacher, student = result.report["chains"][0]["generations"]
    experiment_id = result.report["mlflow"]["experiment_id"]
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1600,1000"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        # MLflow 3's experiment page opens on its GenAI overview; the runs table is the "Training runs" view.
        browser.get(f"{tracking_server}/#/experiments/{experiment_id}/runs")
        WebDriverWait(browser, 60).until(lambda b: "chain0-gen1" in b.find_element("tag name", "body").text)
        page = browser.find_element("tag name", "body").text
        assert "chain0-gen0" in page and "chain0-gen1" in page
        browser.save_screenshot(str(artifacts / "mlflow-experiment.png"))

        browser.get(f"{tracking_server}/#/experiments/{experiment_id}/runs/{student['mlflow_run_id']}")
        WebDriverWait(browser, 60).until(lambda b: "best_val_error" in b.find_element("tag name", "body").text)
        page = browser.find_element("tag name", "body").text
        assert "best_val_error" in page and repr(student["val_error"])[:6] in page
        browser.save_screenshot(str(artifacts / "mlflow-generation-run.png"))
    finally:
        browser.quit()
    assert (artifacts / "mlflow-experiment.png").stat().st_size > 10_000
