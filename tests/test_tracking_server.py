"""The MLflow layout against a real `mlflow server`, from a real sweep (2 chains × Teacher, BAN-1, BAN-2, with
a control arm): the run tree, tags, params, metrics per generation in %, the summary run, descriptions, the
registered model with its aliases, loading @best, moving @best by hand with `banray promote`, and the printed
link opening MLflow's UI on the chains' chart."""

import contextlib
import io
import json
import os
import shutil
import statistics

import mlflow
import pytest
import torch
from click.testing import CliRunner

from banray.sweep import start as sweep

from banray.commands.cli import cli
from banray.records import GenerationRecord
from banray.results import tracking
from banray.spec import parse_spec
from banray.training import checkpoint
from conftest import REPO, tiny_spec

pytestmark = pytest.mark.slow

CHAINS, GENERATIONS = (0, 1), (0, 1, 2)
LEVELS, ARMS = {"sweep", "chain", "generation", "trial"}, {"main", "control"}


@pytest.fixture(scope="module")
def tracked(ray_cluster, tracking_server, tmp_path_factory):
    """The sweep's result, the lines it printed, and what reached stdout and stderr meanwhile (MLflow's own)."""
    spec = parse_spec(tiny_spec(name="tracked", storage=str(tmp_path_factory.mktemp("runs")), chains=2, generations=2,
                                control=True, tracking={"uri": tracking_server}, train={"epochs": 2, "batch_size": 32}))
    lines, output = [], io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        result = sweep.run(spec, echo=lines.append)
    return result, lines, output.getvalue()


@pytest.fixture(scope="module")
def runs(tracked, tracking_server):
    """Run name → run, of every run of the experiment."""
    client = mlflow.MlflowClient(tracking_server)
    experiment_id = tracked[0].report["mlflow"]["experiment_id"]
    return {r.info.run_name: r for r in client.search_runs([experiment_id], max_results=1000)}


def chain_report(result, chain):
    return result.report["chains"][chain]


def test_run_tree_nests_generations_under_chains_and_trials_under_generations(tracked, runs):
    result = tracked[0]
    expected = {"summary"}
    for c in CHAINS:
        groups = [f"chain{c}-gen{g}" for g in GENERATIONS] + [f"chain{c}-control-gen0"]
        expected |= {f"chain{c}", f"chain{c}-control", f"chain{c}-ensembles", *groups}
        expected |= {f"{group}-trial{t}" for group in groups for t in (0, 1)}
    assert set(runs) == expected
    parent = {name: run.data.tags.get("mlflow.parentRunId") for name, run in runs.items()}
    top = ["summary", *(f"chain{c}{arm}" for c in CHAINS for arm in ("", "-control"))]
    assert not any(parent[name] for name in top)
    for c in CHAINS:
        records = chain_report(result, c)["generations"]
        for g in GENERATIONS:
            generation = runs[f"chain{c}-gen{g}"]
            assert generation.info.run_id == records[g]["mlflow_run_id"] and generation.info.status == "FINISHED"
            assert parent[f"chain{c}-gen{g}"] == runs[f"chain{c}"].info.run_id
            assert generation.data.tags["banray.teacher_run_id"] == (records[g - 1]["mlflow_run_id"] if g else "")
        assert parent[f"chain{c}-control-gen0"] == runs[f"chain{c}-control"].info.run_id
        assert parent[f"chain{c}-ensembles"] == runs[f"chain{c}"].info.run_id
        assert runs[f"chain{c}"].info.status == runs[f"chain{c}-control"].info.status == "FINISHED"
    for name, run in runs.items():
        if "-trial" in name:
            group = runs[name.rsplit("-trial", 1)[0]]
            assert parent[name] == group.info.run_id
            assert run.data.params["train.lr"] == "0.05" and run.data.params["model.kwargs.width"] == "8"


def test_every_run_says_its_level_arm_and_column(runs):
    for name, run in runs.items():
        tags = run.data.tags
        assert tags["banray.level"] in LEVELS and tags["banray.arm"] in ARMS and tags["banray.column"], name
    for c in CHAINS:
        for g, column in zip(GENERATIONS, ("Teacher", "BAN-1", "BAN-2")):
            for name, level in ((f"chain{c}-gen{g}", "generation"), (f"chain{c}-gen{g}-trial1", "trial")):
                tags = runs[name].data.tags
                keys = ("sweep", "chain", "generation", "role", "level", "arm", "column")
                assert {k: tags[f"banray.{k}"] for k in keys} == {
                    "sweep": "tracked", "chain": str(c), "generation": str(g), "role": "student" if g else "teacher",
                    "level": level, "arm": "main", "column": column}
        # The control arm is no generation of the chain: grouping by generation leaves Teacher′ out.
        for name in (f"chain{c}-control-gen0", f"chain{c}-control-gen0-trial0"):
            tags = runs[name].data.tags
            assert "banray.generation" not in tags
            assert [tags[f"banray.{k}"] for k in ("arm", "column", "role")] == ["control", "Teacher′", "control"]
        assert runs[f"chain{c}"].data.tags["banray.column"] == "Teacher, BAN-1, BAN-2"
        assert {runs[f"chain{c}{arm}"].data.tags["banray.level"] for arm in ("", "-control")} == {"chain"}
    assert runs["summary"].data.tags["banray.level"] == "sweep"


def history(client, run, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]


def test_chain_runs_log_each_generation_in_percent_at_its_step(tracked, runs, tracking_server):
    result = tracked[0]
    client = mlflow.MlflowClient(tracking_server)
    for c in CHAINS:
        records = chain_report(result, c)["generations"]
        for field in ("test_error", "val_error", "test_ece"):
            logged = history(client, runs[f"chain{c}"], f"{field}_pct")
            assert [step for step, _ in logged] == [0, 1, 2]
            assert [value for _, value in logged] == pytest.approx([100 * r[field] for r in records])
            assert all(0 <= value <= 100 for _, value in logged)
        nll = [value for _, value in history(client, runs[f"chain{c}"], "test_nll")]
        assert nll == pytest.approx([r["test_nll"] for r in records])
        control = chain_report(result, c)["arms"]["control"]
        assert history(client, runs[f"chain{c}-control"], "test_error_pct") == [
            (0, pytest.approx(100 * control["test_error"]))]
        for g in GENERATIONS:  # each generation's run: the same scores at its own step, and as fractions
            generation = runs[f"chain{c}-gen{g}"]
            assert history(client, generation, "test_error_pct") == [(g, pytest.approx(100 * records[g]["test_error"]))]
            assert generation.data.metrics["best_val_error"] == pytest.approx(records[g]["val_error"])
            assert generation.data.metrics["test_error"] == pytest.approx(records[g]["test_error"])
    for name, run in runs.items():
        if "-trial" in name:
            term = "loss/ce" if name.split("-")[1] in ("gen0", "control") else "loss/teacher_ce"
            for metric in (term, "val_error", "val_nll"):
                assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2], (name, metric)


def test_summary_run_keeps_a_few_headline_metrics_and_the_paired_table(tracked, runs, tracking_server, tmp_path):
    result = tracked[0]
    client = mlflow.MlflowClient(tracking_server)
    summary = runs["summary"]
    assert len(summary.data.metrics) <= 20
    means = [100 * result.report["metrics"][column]["test_error"]["mean"] for column in ("Teacher", "BAN-1", "BAN-2")]
    assert history(client, summary, "test_error_pct") == [(g, pytest.approx(means[g])) for g in GENERATIONS]
    ban2 = result.report["paired"]["vs_teacher"]["BAN-2"]["test_error"]
    for stat in ("mean", "ci_low", "ci_high"):
        assert summary.data.metrics[f"vs_teacher.ban2.test_error_pct.{stat}"] == pytest.approx(100 * ban2[stat])
    assert summary.data.metrics["vs_teacher.ban2.test_error_pct.n"] == 2
    teachers = [chain_report(result, c)["generations"][0]["test_error"] for c in CHAINS]
    controls = [chain_report(result, c)["arms"]["control"]["test_error"] for c in CHAINS]
    assert summary.data.metrics["vs_teacher.control.test_error_pct.mean"] == pytest.approx(
        100 * statistics.fmean(a - b for a, b in zip(controls, teachers)))
    assert {a.path for a in client.list_artifacts(summary.info.run_id)} == {
        "spec.yaml", "report.json", "report.md", "report.png", "paired.json"}
    table = json.loads(open(client.download_artifacts(summary.info.run_id, "paired.json", str(tmp_path))).read())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    (row,) = [r for r in rows if r["comparison"] == "BAN-2 − Teacher" and r["metric"] == "test_error"]
    assert row["unit"] == "points" and row["mean"] == pytest.approx(100 * ban2["mean"]) and row["n"] == 2
    comparisons = {r["comparison"] for r in rows}
    assert {"Teacher′ − Teacher", "Ens*2 − Teacher", "Ens*2 − Teacher+Teacher′"} <= comparisons


def test_descriptions_say_what_each_run_is_and_link_its_teacher(tracked, runs, tracking_server):
    result = tracked[0]
    client = mlflow.MlflowClient(tracking_server)
    experiment_id = result.report["mlflow"]["experiment_id"]
    note = client.get_experiment(experiment_id).tags["mlflow.note.content"]
    assert f"(#/experiments/{experiment_id}/runs?workflowType=machine_learning&compareRunsMode=CHART)" in note
    records = chain_report(result, 1)["generations"]
    student = runs["chain1-gen2"].data.tags["mlflow.note.content"]
    assert student.startswith("**BAN-2**: generation 2 of chain 1")
    assert f"[chain1-gen1](#/experiments/{experiment_id}/runs/{records[1]['mlflow_run_id']})" in student
    assert f"test error {100 * records[2]['test_error']:.2f}%" in student
    assert f"validation error {100 * records[2]['val_error']:.2f}%" in student
    chain = runs["chain1"].data.tags["mlflow.note.content"]
    assert f"| 2 | BAN-2 | {100 * records[2]['val_error']:.2f} | {100 * records[2]['test_error']:.2f} |" in chain
    assert "Teacher′" in runs["chain1-control"].data.tags["mlflow.note.content"]
    assert "BAN-2" in runs["summary"].data.tags["mlflow.note.content"]
    version = client.get_model_version_by_alias("tracked", "chain1-gen-2")
    assert f"[Its run](#/experiments/{experiment_id}/runs/{records[2]['mlflow_run_id']})" in version.description
    assert "@best" in client.get_registered_model("tracked").description


def test_registered_versions_aliases_and_best_loads(tracked, tracking_server):
    result, _, output = tracked
    client = mlflow.MlflowClient(tracking_server)
    records = {(c["chain"], g["generation"]): g for c in result.report["chains"] for g in c["generations"]}
    aliases = result.report["mlflow"]["registered_model"]["aliases"]
    assert set(aliases) == {"best", *(f"gen-{g}" for g in GENERATIONS),
                            *(f"chain{c}-gen-{g}" for c in CHAINS for g in GENERATIONS)}
    best = min(records.values(), key=lambda r: (r["val_error"], r["generation"], r["chain"]))
    assert aliases["best"] == aliases[f"chain{best['chain']}-gen-{best['generation']}"]
    for alias, version in aliases.items():
        assert client.get_model_version_by_alias("tracked", alias).version == version
    mv = client.get_model_version_by_alias("tracked", "chain1-gen-1")
    assert mv.tags["banray.generation"] == "1" and mv.tags["banray.run_id"] == records[1, 1]["mlflow_run_id"]
    assert mv.run_id == records[1, 1]["mlflow_run_id"]
    assert "already exists" not in output and "Successfully registered model" not in output

    mlflow.set_tracking_uri(tracking_server)
    try:
        loaded = mlflow.pytorch.load_model("models:/tracked@best").eval()
    finally:
        mlflow.set_tracking_uri(None)
    original, _ = checkpoint.load(best["checkpoint"])
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), original.eval()(x))


def test_registering_into_a_model_that_exists_says_nothing(tracked, tracking_server, capfd):
    result = tracked[0]
    track = tracking.Tracking(tracking_server, "tracked", None)
    records = [GenerationRecord(**g) for g in chain_report(result, 0)["generations"]]
    experiment_id = result.report["mlflow"]["experiment_id"]
    first = tracking.register_generations(track, "tracked-again", records, "val_error", experiment_id)
    capfd.readouterr()
    again = tracking.register_generations(track, "tracked-again", records, "val_error", experiment_id)
    assert "already exists" not in "".join(capfd.readouterr())
    assert int(again["best"]) == int(first["best"]) + len(records)


def test_promote_moves_best_and_records_who(tracked, tracking_server):
    result = CliRunner().invoke(cli, ["promote", "tracked", "--generation", "0", "--tracking-uri", tracking_server])
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(tracking_server)
    best = client.get_model_version_by_alias("tracked", "best")
    assert best.version == client.get_model_version_by_alias("tracked", "gen-0").version
    assert best.tags["banray.promoted_by"] and best.tags["banray.promoted_at"].startswith("20")
    missing = CliRunner().invoke(cli, ["promote", "tracked", "--generation", "7", "--tracking-uri", tracking_server])
    assert missing.exit_code == 2 and "has no alias @gen-7" in missing.output


@pytest.fixture
def browser():
    """Headless Debian Chromium; BANRAY_REQUIRE_BROWSER makes a missing one a failure."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("BANRAY_REQUIRE_BROWSER"):
            pytest.fail("chromium and chromedriver are required here (.ci/run installs them)")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1600,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def test_the_printed_link_opens_the_chains_chart_and_their_runs(tracked, browser):
    """The link the sweep prints opens MLflow's training runs (not the GenAI overview) in the chart view, with
    a `test_error_pct` chart that draws each chain; its table view lists the chain runs. Screenshots go to
    test-artifacts/."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    result, lines, _ = tracked
    experiment_id = result.report["mlflow"]["experiment_id"]
    (link,) = [line.removeprefix("Open the MLflow UI: ") for line in lines if line.startswith("Open the MLflow UI: ")]
    assert link.endswith(f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning&compareRunsMode=CHART")
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    wait = WebDriverWait(browser, 60)
    browser.get(link)

    def chart(metric):
        cards = browser.find_elements(By.CSS_SELECTOR, "[data-testid=experiment-view-compare-runs-card]")
        return next((card for card in cards if card.text.splitlines()[:1] == [metric]), None)

    card = wait.until(lambda b: chart("test_error_pct"))
    wait.until(lambda b: all(f"chain{c} (test_error_pct)" in chart("test_error_pct").text for c in CHAINS))
    # The model-training sidebar (its Model registry link), not the GenAI one that opens on the overview.
    assert "Model registry" in browser.find_element(By.TAG_NAME, "body").text and "overview" not in browser.current_url
    assert "summary (test_error_pct)" in card.text  # the mean over chains
    browser.save_screenshot(str(artifacts / "mlflow-chain-chart.png"))

    table = browser.find_element(By.CSS_SELECTOR, "input[name=runs-view-mode][value=TABLE]")
    browser.execute_script("arguments[0].closest('label').click()", table)
    wait.until(EC.element_located_to_be_selected((By.CSS_SELECTOR, "input[name=runs-view-mode][value=TABLE]")))
    names = {f"chain{c}{arm}" for c in CHAINS for arm in ("", "-control")}  # top-level runs: the chains and summary
    wait.until(lambda b: {"Duration", "summary", *names} <= set(b.find_element(By.TAG_NAME, "body").text.split()))
    assert "chain0-gen1" not in browser.find_element(By.TAG_NAME, "body").text  # nested under chain0, folded
    browser.save_screenshot(str(artifacts / "mlflow-training-runs.png"))
    assert (artifacts / "mlflow-chain-chart.png").stat().st_size > 10_000
