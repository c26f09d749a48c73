import dataclasses
import json
import math
import re

import numpy as np
import pytest
from scipy.stats import t as scipy_t

from banray.commands.inspection import _chain_results
from banray.records import ChainResult, EnsembleRecord, GenerationRecord
from banray.results import report
from banray.spec import parse_spec
from conftest import tiny_spec


def record(chain, generation, test_error, status="finished", test_nll=None, test_ece=None, role=None):
    return GenerationRecord(
        chain=chain, generation=generation, role=role or ("teacher" if generation == 0 else "student"), arch="cnn",
        objective="ce" if generation == 0 else "ban", status=status, mlflow_run_id=f"run-{chain}-{generation}",
        teacher_checkpoint=None if generation == 0 else f"/ckpt/{chain}/{generation - 1}",
        teacher_run_id=None if generation == 0 else f"run-{chain}-{generation - 1}",
        val_error=test_error, test_error=test_error if status == "finished" else None,
        test_nll=test_nll, test_ece=test_ece,
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
    assert "# banray report: tiny" in text
    assert "| Chain | Teacher | BAN-1 | BAN-2 | Ens\\*2 |\n|---|---|---|---|---|\n| 0 | 10.00 | 8.00 | 7.00 | 6.00 |" in text
    assert "| 2 | 14.00 | failed | — | — |" in text
    assert "Ens\\*k averages the softmax outputs of the last k student generations" in text
    assert "chain 2 stopped after generation 1: no trial of generation 1 finished" in text
    assert "chain 2 generation 1 failed: all 2 trial(s) failed" in text
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.stat().st_size > 10_000


def test_single_chain_says_there_is_no_spread():
    spec = parse_spec(tiny_spec())
    built = build(spec, [ChainResult(0, [record(0, 0, 0.1), record(0, 1, 0.1)], [], None)])
    assert "| mean ± std | 10.00 | 10.00 |" in report.table(built)
    assert "With one chain there is no spread" in report.markdown(built)
    assert "With one chain no claim can be made" in report.caption(built)
    assert "| verdict | — | no claim (one chain) (primary) |" in report.table(built)
    assert "| Δ vs Teacher (points), 95% CI | — | +0.00 (one chain) |" in report.table(built)


def test_language_models_report_perplexity():
    spec = parse_spec(tiny_spec(data={"dataset": "ptb"}, model={"arch": "lstm_lm"}, search={"metric": "val_nll"}))
    built = build(spec, [ChainResult(0, [record(0, 0, 0.7, test_nll=math.log(120.0)),
                                         record(0, 1, 0.7, test_nll=math.log(110.0))], [], None)])
    assert built["headline"] == "test perplexity"
    assert report.table(built).splitlines()[2] == "| 0 | 120.00 | 110.00 |"
    assert report.caption(built).startswith("Test perplexity on `ptb`")
    assert built["paired"]["headline_metric"] == "test_perplexity"
    assert built["paired"]["vs_teacher"]["BAN-1"]["test_perplexity"]["mean"] == pytest.approx(-10.0)
    assert "| Δ vs Teacher (perplexity), 95% CI | — | -10.00 (one chain) |" in report.table(built)


# Four chains with the control arm. Differences to each chain's teacher (test error):
# BAN-1 all lower, BAN-2 mixed, Ens*2 all higher, Teacher′ mixed, Teacher+Teacher′ all lower.
TEACHER = [0.100, 0.120, 0.110, 0.130]
COLUMNS = {
    "BAN-1": [0.090, 0.105, 0.100, 0.118],
    "BAN-2": [0.105, 0.110, 0.115, 0.125],
    "Ens*2": [0.110, 0.130, 0.125, 0.140],
    "Teacher′": [0.105, 0.115, 0.118, 0.126],
    "Teacher+Teacher′": [0.095, 0.112, 0.104, 0.122],
}
T_975_3 = 3.182446  # Student t, 3 degrees of freedom, from a table


def t_p_by_hand(differences):
    """The two-sided paired t-test's p, from the t statistic and scipy's t tail only."""
    mean, sd, _, _ = hand_interval(differences)
    return 2 * scipy_t.sf(abs(mean) / (sd / math.sqrt(len(differences))), len(differences) - 1)


def holm_by_hand(p_values):
    """Holm's step-down adjustment written out: sorted ascending, the i-th times (m − i), running maximum, cap 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def holm_verdicts():
    """(column, baseline) → the verdict the report must give: the primary BAN-2 − Teacher by its interval, every
    other comparison by its Holm-adjusted t-test p over the five others."""
    pairs = {(c, "Teacher"): [v - t for v, t in zip(values, TEACHER)] for c, values in COLUMNS.items()}
    pairs["Ens*2", "Teacher+Teacher′"] = [a - b for a, b in zip(COLUMNS["Ens*2"], COLUMNS["Teacher+Teacher′"])]
    others = [pair for pair in pairs if pair != ("BAN-2", "Teacher")]
    adjusted = dict(zip(others, holm_by_hand([t_p_by_hand(pairs[pair]) for pair in others])))

    def verdict(differences, p):
        mean = sum(differences) / len(differences)
        return ("worse" if mean > 0 else "better") if p < 0.05 else "within seed noise"

    found = {pair: verdict(pairs[pair], adjusted[pair]) for pair in others}
    _, _, low, high = hand_interval(pairs["BAN-2", "Teacher"])
    found["BAN-2", "Teacher"] = ("better" if high < 0 else "worse" if low > 0 else "within seed noise") + " (primary)"
    return found


def test_every_comparison_but_the_primary_is_holm_adjusted(controlled):
    expected = holm_verdicts()
    paired = controlled["paired"]
    assert paired["primary"] == {"column": "BAN-2", "baseline": "Teacher"}
    for (column, baseline), verdict in expected.items():
        section = paired["vs_teacher"] if baseline == "Teacher" else paired["vs_own_baseline"]
        found = section[column]["test_error"]
        assert found["verdict"] == verdict.removesuffix(" (primary)"), (column, baseline)
        if baseline == "Teacher" and column != "BAN-2":
            assert found["holm_p"] >= found["t_p"]
    assert paired["vs_teacher"]["BAN-2"]["test_error"]["holm_p"] is None
    assert "The primary comparison, BAN-2 vs Teacher, is called better or worse" in report.caption(controlled)
    assert "each of the 5 other comparisons only when its Holm-adjusted p" in report.caption(controlled)


@pytest.mark.parametrize("primary", [None, "BAN-1", "BAN-1 vs Teacher"])
def test_only_the_primary_comparison_keeps_its_plain_verdict(primary):
    """BAN-1 − Teacher has t-test p 0.032: better on its own, within seed noise once Holm-adjusted beside Ens*2."""
    ban1 = [t + d for t, d in zip(TEACHER, [-0.010, -0.018, -0.004, -0.012])]
    spec = parse_spec(tiny_spec(generations=2, chains=4, **({"report": {"primary": primary}} if primary else {})))
    chains = [ChainResult(c, [record(c, 0, TEACHER[c]), record(c, 1, ban1[c]), record(c, 2, COLUMNS["BAN-2"][c])],
                          [EnsembleRecord(2, [1, 2], COLUMNS["Teacher′"][c], 0.3)], None) for c in range(4)]
    paired = build(spec, chains)["paired"]
    found = paired["vs_teacher"]["BAN-1"]["test_error"]
    assert found["t_p"] == pytest.approx(t_p_by_hand([b - t for b, t in zip(ban1, TEACHER)]))
    assert found["ci_high"] < 0
    if primary is None:
        assert paired["primary"] == {"column": "BAN-2", "baseline": "Teacher"}
        family = [found["t_p"], paired["vs_teacher"]["Ens*2"]["test_error"]["t_p"]]
        assert found["holm_p"] == pytest.approx(holm_by_hand(family)[0]) == pytest.approx(2 * found["t_p"])
        assert found["verdict"] == "within seed noise"
    else:
        assert paired["primary"] == {"column": "BAN-1", "baseline": "Teacher"}
        assert found["holm_p"] is None and found["verdict"] == "better"


def hand_interval(differences):
    n = len(differences)
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    return mean, sd, mean - T_975_3 * sd / math.sqrt(n), mean + T_975_3 * sd / math.sqrt(n)


@pytest.fixture
def controlled():
    spec = parse_spec(tiny_spec(generations=2, chains=4, control=True))

    def scored(chain, generation, error, role=None):
        return record(chain, generation, error, test_nll=3 * error, test_ece=error / 2, role=role)

    def ensemble(k, members, error):
        return EnsembleRecord(k, members, error, 3 * error, error / 2)

    chains = [
        ChainResult(
            c,
            [scored(c, 0, TEACHER[c]), scored(c, 1, COLUMNS["BAN-1"][c]), scored(c, 2, COLUMNS["BAN-2"][c])],
            [ensemble(2, [1, 2], COLUMNS["Ens*2"][c])],
            f"ens-{c}",
            arms={"control": scored(c, 0, COLUMNS["Teacher′"][c], role="control")},
            control_ensembles=[ensemble(2, [0, "control"], COLUMNS["Teacher+Teacher′"][c])],
        )
        for c in range(4)
    ]
    return build(spec, chains)


def test_control_arm_columns_and_records(controlled, tmp_path):
    assert controlled["columns"] == ["Teacher", "BAN-1", "BAN-2", "Ens*2", "Teacher′", "Teacher+Teacher′"]
    assert controlled["rows"]["0"]["Teacher′"] == pytest.approx(10.5)
    loaded = json.loads(report.write(controlled, tmp_path)[0].read_text())
    chain = loaded["chains"][0]
    assert chain["arms"]["control"]["role"] == "control" and chain["arms"]["control"]["test_error"] == 0.105
    assert chain["control_ensembles"] == [{"k": 2, "members": [0, "control"], "test_error": 0.095,
                                           "test_nll": pytest.approx(0.285), "test_ece": 0.0475}]
    assert loaded["metrics"]["Teacher′"]["test_ece"]["mean"] == pytest.approx(sum(COLUMNS["Teacher′"]) / 8)


@pytest.mark.parametrize("column", list(COLUMNS))
def test_paired_section_matches_hand_computed_intervals(controlled, column):
    differences = [v - t for v, t in zip(COLUMNS[column], TEACHER)]
    mean, sd, low, high = hand_interval(differences)
    paired = controlled["paired"]["vs_teacher"][column]
    error = paired["test_error"]
    assert error["n"] == 4
    assert (error["mean"], error["std"]) == (pytest.approx(mean, abs=1e-9), pytest.approx(sd, rel=1e-5))
    assert (error["ci_low"], error["ci_high"]) == (pytest.approx(low, abs=1e-8), pytest.approx(high, abs=1e-8))
    assert error["better"] == sum(d < 0 for d in differences) and error["worse"] == sum(d > 0 for d in differences)
    assert paired["test_nll"]["mean"] == pytest.approx(3 * mean) and paired["test_ece"]["mean"] == pytest.approx(mean / 2)
    assert (error["t_p"] < 0.05) == (high < 0 or low > 0)  # the p the Holm adjustment starts from


def test_table_verdicts_follow_the_intervals(controlled):
    lines = report.table(controlled).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")][1:] for line in lines[2:]}
    verdicts = dict(zip(header[1:], rows["verdict"]))
    expected = holm_verdicts()
    assert verdicts == {"Teacher": "—", **{c: expected[c, "Teacher"] for c in COLUMNS}}
    assert verdicts["BAN-2"] == "within seed noise (primary)"
    intervals = dict(zip(header[1:], rows["Δ vs Teacher (points), 95% CI"]))
    assert intervals["BAN-1"] == "-1.18 [-1.55, -0.80]"  # sd 0.236 points, half-width 3.182 × 0.236 / 2
    assert dict(zip(header[1:], rows["better/tied/worse; Wilcoxon p"]))["BAN-1"] == "4/0/0; p 0.12"
    against = dict(zip(header[1:], rows["Δ vs its own baseline (points), 95% CI"]))
    assert against["Ens*2"].endswith(f"vs Teacher+Teacher′, {expected['Ens*2', 'Teacher+Teacher′']}")
    assert against["BAN-1"] == "—"
    assert "test NLL, mean ± std" in rows and "Δ ECE (points), 95% CI" in rows


def test_caption_gives_the_seed_noise_band(controlled):
    differences = [v - t for v, t in zip(COLUMNS["Teacher′"], TEACHER)]
    mean, sd, low, high = hand_interval(differences)
    text = report.caption(controlled)
    assert (f"Seed noise (Teacher′ − Teacher): {100 * mean:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}] points, "
            f"sd {100 * sd:.2f} over 4 chains") in text
    assert "With 4 chains the signed-rank test cannot reach p < 0.05 (it needs 6)" in text
    assert "Teacher′ is the control arm" in text


def test_without_control_the_caption_says_so(built):
    assert "No control arm (Teacher′) was trained" in report.caption(built)
    assert built["paired"]["vs_own_baseline"] == {}
    # Ens*2 is never set against a smaller ensemble, nor silently dropped
    assert built["paired"]["no_same_size_baseline"] == {"Ens*2": "Teacher+Teacher′"}
    assert "no same-size baseline (Teacher+Teacher′ not trained)" in report.table(built)


def test_failed_control_is_left_out_of_the_pairs():
    spec = parse_spec(tiny_spec(chains=3, control=True))
    chains = [
        ChainResult(c, [record(c, 0, 0.1 + c / 100), record(c, 1, 0.1)], [], None,
                    arms={"control": record(c, 0, 0.11, status="failed" if c == 2 else "finished", role="control")})
        for c in range(3)
    ]
    built = build(spec, chains)
    assert built["rows"]["2"]["Teacher′"] == "failed"
    assert built["paired"]["vs_teacher"]["Teacher′"]["test_error"]["n"] == 2


def panels(built):
    figure = report.figure(built)
    lineage, differences = figure.axes
    return lineage, differences


def scatter(axis, gid):
    (points,) = [c for c in axis.collections if c.get_gid() == gid]
    return points.get_offsets()


def test_figure_draws_lineage_lines_only_and_ensembles_and_control_as_markers(controlled):
    lineage, _ = panels(controlled)
    lines = lineage.get_lines()
    assert sorted(line.get_gid() for line in lines) == [f"lineage:{c}" for c in (0, 1, 2, 3, "mean")]
    for line in lines:  # only Teacher → BAN-1 → BAN-2 is connected: no line reaches an ensemble or the control arm
        assert list(line.get_xdata()) == [0, 1, 2]
    for chain in range(4):
        (line,) = [line for line in lines if line.get_gid() == f"lineage:{chain}"]
        values = [100 * TEACHER[chain], 100 * COLUMNS["BAN-1"][chain], 100 * COLUMNS["BAN-2"][chain]]
        assert list(line.get_ydata()) == pytest.approx(values)
    (mean,) = [line for line in lines if line.get_gid() == "lineage:mean"]
    means = [controlled["summary"][c]["mean"] for c in ("Teacher", "BAN-1", "BAN-2")]
    assert list(mean.get_ydata()) == pytest.approx(means)
    for column, x in (("Ens*2", 2), ("Teacher′", 3), ("Teacher+Teacher′", 4)):
        offsets = scatter(lineage, f"markers:{column}")
        assert list(offsets[:, 0]) == [x] * 4
        assert sorted(offsets[:, 1]) == pytest.approx(sorted(100 * v for v in COLUMNS[column]))
        assert list(scatter(lineage, f"mean:{column}")[0]) == pytest.approx([x, controlled["summary"][column]["mean"]])
    legend = set(lineage.get_legend_handles_labels()[1])
    assert {"Ens*2", "Teacher′", "Teacher+Teacher′", "mean over chains (black)"} <= legend
    assert lineage.get_ylabel() == "test error (%)"


def test_figure_shades_the_seed_noise_of_the_control_arm(controlled):
    lineage, _ = panels(controlled)
    (band,) = [p for p in lineage.patches if p.get_gid() == "seed-noise"]
    sd = controlled["paired"]["vs_teacher"]["Teacher′"]["test_error"]["std"]
    half = 100 * sd / math.sqrt(2)  # one run's seed noise: the difference of two runs has √2 its sd
    bounds = sorted(band.get_path().transformed(band.get_patch_transform()).vertices[:, 1])
    assert (bounds[0], bounds[-1]) == (pytest.approx(11.5 - half), pytest.approx(11.5 + half))


def test_figure_error_bars_are_the_reports_intervals(controlled):
    _, differences = panels(controlled)
    labels = {tick: label.get_text() for tick, label in zip(differences.get_xticks(), differences.get_xticklabels())}
    drawn = {}
    for container in differences.containers:
        data, _, (bars,) = container.lines
        for x, y, segment in zip(data.get_xdata(), data.get_ydata(), bars.get_segments()):
            assert segment[0][0] == segment[1][0] == x
            drawn[labels[x]] = (y, segment[0][1], segment[1][1])
    assert set(drawn) == {"BAN-1", "BAN-2", "Ens*2", "Teacher′", "Teacher+Teacher′"}
    for column, (mean, low, high) in drawn.items():
        paired = controlled["paired"]["vs_teacher"][column]["test_error"]
        assert (mean, low, high) == (pytest.approx(100 * paired["mean"]), pytest.approx(100 * paired["ci_low"]),
                                     pytest.approx(100 * paired["ci_high"]))
    assert [list(line.get_ydata()) for line in differences.get_lines() if line.get_gid() == "zero"] == [[0, 0]]
    assert differences.get_ylabel() == "Δ test error vs Teacher (points)"


def test_figure_of_one_language_model_chain_has_points_without_intervals(tmp_path):
    spec = parse_spec(tiny_spec(data={"dataset": "ptb"}, model={"arch": "lstm_lm"}, search={"metric": "val_nll"}))
    built = build(spec, [ChainResult(0, [record(0, 0, 0.7, test_nll=math.log(120.0)),
                                         record(0, 1, 0.7, test_nll=math.log(110.0))], [], None)])
    lineage, differences = panels(built)
    assert [list(line.get_ydata()) for line in lineage.get_lines()] == [pytest.approx([120, 110])] * 2
    assert lineage.get_ylabel() == "test perplexity" and not lineage.patches  # one chain: no noise measured
    assert not differences.containers
    (points,) = differences.collections
    assert points.get_offsets().tolist() == [pytest.approx([0, -10])]
    assert differences.get_ylabel() == "Δ test perplexity vs Teacher (perplexity)"
    report.plot(built, tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_figure_leaves_failed_generations_out_and_draws_a_teacher_alone(built, tmp_path):
    lineage, _ = panels(built)
    (failed,) = [line for line in lineage.get_lines() if line.get_gid() == "lineage:2"]
    assert list(failed.get_xdata()) == [0, 1, 2]
    assert failed.get_ydata()[0] == pytest.approx(14.0) and all(map(math.isnan, failed.get_ydata()[1:]))
    teachers = parse_spec(tiny_spec(chains=2)).model_copy(update={"generations": 0})
    alone = build(teachers, [ChainResult(c, [record(c, 0, 0.1 + c / 50)], [], None) for c in range(2)])
    lineage, differences = panels(alone)
    assert [list(line.get_xdata()) for line in lineage.get_lines()] == [[0]] * 3
    assert not differences.containers and not differences.collections
    report.plot(alone, tmp_path / "alone.png")


def tables(text):
    """The markdown tables of text, each a list of its lines."""
    found, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append(current)
            current = []
    return found


def cells(line):
    return re.split(r"(?<!\\)\|", line)[1:-1]  # cells between unescaped pipes


def test_markdown_has_the_three_tables_escaped(controlled):
    text = report.markdown(controlled)
    assert text.count("\n|---") == 3
    paper, evidence, calibration = tables(text)
    assert paper[0] == "| Chain | Teacher | BAN-1 | BAN-2 | Ens\\*2 | Teacher′ | Teacher+Teacher′ |"
    assert paper[-1].startswith("| mean ± std | 11.50 ± 1.29 |") and len(paper) == 2 + 4 + 1
    assert "Ens*2" not in text and "Ens\\*2" in text
    assert evidence[0] == ("| Column | minus (same chain) | Δ test error (points) | 95% interval (points) | better | tied "
                           "| worse | Wilcoxon p | Holm p | verdict |")
    holm = controlled["paired"]["vs_teacher"]["BAN-1"]["test_error"]["holm_p"]
    assert f"| BAN-1 | Teacher | -1.18 | \\[-1.55, -0.80\\] | 4 | 0 | 0 | 0.12 | {holm:.2f} | better |" in evidence
    assert cells(evidence[2])[0].strip() == "BAN-2 (primary)"  # the primary comparison comes first
    assert cells(evidence[-1])[1].strip() == "Teacher+Teacher′"  # Ens*2 against the control ensemble
    assert calibration[0].startswith("| Column | test NLL (nats), mean ± std | Δ test NLL (nats), 95% CI | ECE (%)")
    assert len(calibration) == 2 + len(controlled["columns"])
    for table in (paper, evidence, calibration):
        assert {len(cells(line)) for line in table} == {len(cells(table[0]))}
    assert text.index("Seed noise (Teacher′ − Teacher)") < text.index("|---")  # the caption comes first


def variation_of(data, **overrides):
    return report.variation(parse_spec(tiny_spec(data=data, **overrides)))


def test_the_caption_of_an_augmented_dataset_covers_each_chains_split_and_augmentation():
    spec = parse_spec(tiny_spec(data={"dataset": "cifar10"}, chains=2, control=True))
    built = build(spec, [ChainResult(c, [record(c, 0, 0.1), record(c, 1, 0.09)], [], None) for c in range(2)])
    expected = ("The intervals cover what differs between chains: initialisation, data order, and each chain's own "
                "train/validation split and augmentation (Teacher′ shares its chain's).")
    assert built["variation"] == expected and expected in report.caption(built)
    assert expected in report.markdown(built)
    # Without a control arm there is no Teacher′ to share it; a model with dropout adds it to what varies.
    assert variation_of({"dataset": "cifar100"}) == (
        "The intervals cover what differs between chains: initialisation, data order, and each chain's own "
        "train/validation split and augmentation.")
    assert variation_of({"dataset": "cifar10"}, model={"arch": "wrn", "kwargs": {"depth": 10, "dropout": 0.3}},
                        control=True) == (
        "The intervals cover what differs between chains: initialisation, dropout, data order, and each chain's own "
        "train/validation split and augmentation (Teacher′ shares its chain's).")
    # A student with dropout is enough: dropout then differs between chains' students.
    assert "initialisation, dropout, data order" in variation_of(
        {"dataset": "cifar10"}, student={"arch": "cnn", "kwargs": {"width": 8, "dropout": 0.1}})


@pytest.mark.parametrize("dataset", ["digits", "synthetic"])
def test_the_caption_of_digits_leaves_augmentation_out(dataset):
    spec = parse_spec(tiny_spec(data={"dataset": dataset}, chains=2, control=True))
    built = build(spec, [ChainResult(c, [record(c, 0, 0.1), record(c, 1, 0.09)], [], None) for c in range(2)])
    expected = (f"The intervals cover what differs between chains: initialisation, data order, and each chain's own "
                f"train/validation split (Teacher′ shares its chain's); `{dataset}` has no training augmentation.")
    assert built["variation"] == expected and expected in report.caption(built)
    assert f"`{dataset}` has no training augmentation." in report.markdown(built)  # the name stays code


def test_the_caption_of_mnist1d_leaves_augmentation_out():
    assert variation_of({"dataset": "mnist1d"}, model={"arch": "mlp1d"}, control=True) == (
        "The intervals cover what differs between chains: initialisation, data order, and each chain's own "
        "train/validation split (Teacher′ shares its chain's); `mnist1d` has no training augmentation.")


def test_the_caption_of_ptb_covers_initialisation_and_dropout_only():
    lm = {"model": {"arch": "lstm_lm"}, "search": {"metric": "val_nll"}, "control": True}
    expected = ("The intervals cover initialisation and dropout only: every chain trains on the same train, "
                "validation and test splits of `ptb`, read in the same order.")
    assert variation_of({"dataset": "ptb"}, **lm) == expected  # lstm_lm's dropout is 0.65 by default
    # data.shared_split changes nothing for PTB's fixed files, so the caption does not name it.
    assert variation_of({"dataset": "ptb", "shared_split": True}, **lm) == expected
    no_dropout = dict(lm, model={"arch": "lstm_lm", "kwargs": {"dropout": 0.0}})
    assert variation_of({"dataset": "ptb"}, **no_dropout) == (
        "The intervals cover initialisation only: every chain trains on the same train, validation and test splits "
        "of `ptb`, read in the same order.")
    spec = parse_spec(tiny_spec(data={"dataset": "ptb"}, **lm))
    built = build(spec, [ChainResult(0, [record(0, 0, 0.7, test_nll=math.log(120.0)),
                                         record(0, 1, 0.7, test_nll=math.log(110.0))], [], None)])
    assert built["variation"] == expected and expected in report.caption(built)
    assert "augmentation" not in report.caption(built) and "data order" not in report.caption(built)


@pytest.mark.parametrize("dataset, shared", [
    ("cifar10", "one train/validation split and one augmentation stream (data.shared_split)."),
    ("digits", "one train/validation split (data.shared_split); `digits` has no training augmentation."),
    ("mnist1d", "one train/validation split (data.shared_split); `mnist1d` has no training augmentation."),
])
def test_the_caption_of_shared_splits_covers_initialisation_and_data_order_only(dataset, shared):
    text = variation_of({"dataset": dataset, "shared_split": True}, control=True,
                        **({"model": {"arch": "mlp1d"}} if dataset == "mnist1d" else {}))
    assert text == f"The intervals cover initialisation and data order only: every chain trains on {shared}"
    assert report.SHARED_SPLIT in text and "Teacher′" not in text


def test_markdown_escapes_hostile_names(built):
    hostile = "a|b*c_<script>"
    assert report.escape_markdown(hostile) == "a\\|b\\*c\\_\\<script\\>"
    assert (report.escape_markdown("x\n| y `z` [l](u) # $m$ &amp; ~s~")
            == "x \\| y \\`z\\` \\[l\\](u) \\# \\$m\\$ \\&amp; \\~s\\~")
    built["sweep"] = hostile
    built["chains"][0]["generations"][0]["arch"] = "<img src=x onerror=alert(1)>"
    built["chains"][2]["stopped"] = "boom | </table>\n# owned"
    text = report.markdown(built)
    assert "# banray report: a\\|b\\*c\\_\\<script\\>" in text
    assert "Architecture: \\<img src=x onerror=alert(1)\\>, cnn" in text
    assert "chain 2 stopped after generation 1: boom \\| \\</table\\> \\# owned" in text
    assert not re.search(r"(?<!\\)<", text) and "\n# owned" not in text



def test_the_figure_of_many_chains_names_them_in_one_legend_entry(recwarn):
    """48 chains' entries once took the lineage panel's whole height (matplotlib: 'axes sizes collapsed')."""
    chains = [ChainResult(c, [record(c, 0, 0.1), record(c, 1, 0.09 + c / 1000)], [], None) for c in range(48)]
    lineage, _ = panels(build(parse_spec(tiny_spec(chains=48)), chains))
    labels = lineage.get_legend_handles_labels()[1]
    assert [label for label in labels if label.startswith(("chain", "48"))] == ["48 chains, a line each"]
    assert len(lineage.get_lines()) == 49
    lineage.figure.canvas.draw()  # where constrained layout gives up
    assert not [w for w in recwarn if "collapsed" in str(w.message)]


def arm_record(chain, arm, error):
    return GenerationRecord(chain=chain, generation=0, role="control" if arm.startswith("control") else arm, arch="cnn",
                            objective="ce", status="finished", mlflow_run_id=f"run-{chain}-{arm}", teacher_checkpoint=None,
                            teacher_run_id=None, val_error=error, test_error=error, arm=arm)


@pytest.fixture
def armed():
    """Five chains with two teacher′s, the equal-budget and the label-smoothing arms; Ens*2 and Ens*3 (the teacher
    counted), the control ensembles of 2 and 3 members; fidelity on both students."""
    rng = np.random.default_rng(3)
    spec = parse_spec(tiny_spec(generations=2, chains=5, ensembles={"include_teacher": True},
                                control={"teachers": 2, "equal_budget": True, "label_smoothing": 0.1}))
    values = {name: 0.1 + rng.normal(0, 0.01, 5) for name in (
        "Teacher", "BAN-1", "BAN-2", "Ens*2", "Ens*3", "control", "control2", "budget", "smoothing", "C2", "C3")}
    fidelity = {g: (rng.uniform(0.8, 1.0, 5), rng.uniform(0.0, 0.3, 5)) for g in (1, 2)}

    def generation(c, g):
        return dataclasses.replace(record(c, g, float(values[["Teacher", "BAN-1", "BAN-2"][g]][c])),
                                   test_agreement=float(fidelity[g][0][c]) if g else None,
                                   test_teacher_kl=float(fidelity[g][1][c]) if g else None)

    chains = [
        ChainResult(c, [generation(c, g) for g in range(3)],
                    [EnsembleRecord(2, [1, 2], float(values["Ens*2"][c]), 0.3),
                     EnsembleRecord(3, [0, 1, 2], float(values["Ens*3"][c]), 0.3)], None,
                    arms={arm: arm_record(c, arm, float(values[arm][c])) for arm in ("control", "control2", "budget", "smoothing")},
                    control_ensembles=[EnsembleRecord(2, [0, "control"], float(values["C2"][c]), 0.3),
                                       EnsembleRecord(3, [0, "control", "control2"], float(values["C3"][c]), 0.3)])
        for c in range(5)
    ]
    return build(spec, chains), values, fidelity


def test_each_ensemble_is_set_against_the_control_ensemble_of_its_own_size(armed):
    built, values, _ = armed
    assert built["columns"] == ["Teacher", "BAN-1", "BAN-2", "Ens*2", "Ens*3", "Teacher′", "Teacher+Teacher′",
                                "Teacher+2×Teacher′", "Equal-budget", "Label-smoothing"]
    paired = built["paired"]
    assert paired["own_baselines"] == {"Ens*2": "Teacher+Teacher′", "Ens*3": "Teacher+2×Teacher′",
                                       "Equal-budget": "BAN-2", "Label-smoothing": "BAN-1"}
    assert paired["no_same_size_baseline"] == {}
    for column, (a, b) in {"Ens*2": ("Ens*2", "C2"), "Ens*3": ("Ens*3", "C3"), "Equal-budget": ("budget", "BAN-2"),
                           "Label-smoothing": ("smoothing", "BAN-1")}.items():
        d = values[a] - values[b]  # numpy, not banray: the paired differences and their t interval
        half = scipy_t.ppf(0.975, 4) * d.std(ddof=1) / np.sqrt(5)
        found = paired["vs_own_baseline"][column]["test_error"]
        assert (found["mean"], found["ci_low"], found["ci_high"]) == (
            pytest.approx(d.mean()), pytest.approx(d.mean() - half), pytest.approx(d.mean() + half))
    table = report.table(built)
    assert "vs Teacher+2×Teacher′" in table and "vs BAN-2" in table


def test_too_few_teachers_give_no_same_size_baseline_rather_than_a_smaller_one(armed):
    built, values, _ = armed
    spec = parse_spec(tiny_spec(generations=2, chains=5, ensembles={"include_teacher": True}, control=True))
    chains = [dataclasses.replace(chain, arms={"control": chain.arms["control"]},
                                  control_ensembles=chain.control_ensembles[:1])
              for chain in report_chains(built)]
    fewer = build(spec, chains)["paired"]
    assert fewer["no_same_size_baseline"] == {"Ens*3": "Teacher+2×Teacher′"}
    assert "Ens*3" not in fewer["vs_own_baseline"] and fewer["own_baselines"]["Ens*2"] == "Teacher+Teacher′"
    assert "| Ens\\*3 | Teacher+2×Teacher′ |" in report.markdown(build(spec, chains))


def test_fidelity_is_each_students_agreement_and_kl_over_chains(armed):
    built, _, fidelity = armed
    for g, (agreement, kl) in fidelity.items():
        found = built["fidelity"][f"BAN-{g}"]
        assert (found["agreement"]["mean"], found["agreement"]["std"]) == (
            pytest.approx(agreement.mean()), pytest.approx(agreement.std(ddof=1)))
        assert found["teacher_kl"]["mean"] == pytest.approx(kl.mean()) and found["teacher_kl"]["n"] == 5
    table = report.table(built)
    assert f"| agreement with its teacher (%) | — | {100 * fidelity[1][0].mean():.2f} ± " in table
    assert "## Fidelity: does each student match its teacher? (test split)" in report.markdown(built)


def report_chains(built):
    return _chain_results(built, "report.json")
