"""The sweep report: the paper's table (Teacher | BAN-1 … BAN-G | Ens*2 … Ens*G, then the control arm
Teacher′ and Teacher+Teacher′; a row per chain and mean ± std over chains), the paired differences to
each chain's teacher with their intervals and verdicts, calibration, report.json, report.md and an
error-vs-generation plot.

Numbers are each generation's best trial, selected on the validation split at its best-validation
epoch, evaluated once on the test split: test error in % for classification, test perplexity for
language models.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any

from banray import stats
from banray.data import dataset_info, dataset_kind
from banray.records import ChainResult, EnsembleRecord, GenerationRecord
from banray.spec import SweepSpec

# Which sources of variation the intervals over chains cover.
VARIATION = {
    "independent": "The intervals cover what differs between chains: initialisation, data order, and each chain's "
                   "own train/validation split and augmentation (Teacher′ shares its chain's).",
    "shared": "The intervals cover initialisation and data order only: every chain trains on one split and one "
              "augmentation stream (data.shared_split).",
}
SELECTION = "best trial by {metric} on the validation split, at its best-validation epoch; test split evaluated once on it"
PLOT_FILE = "report.png"
BASELINE = "Teacher"
CONTROL = "Teacher′"  # the control arm: the teacher's recipe with a fresh seed
CONTROL_ENSEMBLE = "Teacher+Teacher′"
# Metric → (factor to its display unit, the unit of a difference, decimals shown).
DISPLAY = {
    "test_error": (100, "points", 2),
    "test_ece": (100, "points", 2),
    "test_nll": (1, "nats", 3),
    "test_perplexity": (1, "perplexity", 2),
}
PAIRED_STATS = ("n", "mean", "std", "ci_low", "ci_high", "better", "tied", "worse", "wilcoxon_p")


def generation_column(generation: int) -> str:
    return BASELINE if generation == 0 else f"BAN-{generation}"


def ensemble_column(k: int) -> str:
    return f"Ens*{k}"


def metric_slug(column: str) -> str:
    """An MLflow-safe name for a column: teacher, ban1, ens2, control, control_ensemble."""
    fixed = {BASELINE: "teacher", CONTROL: "control", CONTROL_ENSEMBLE: "control_ensemble"}
    return fixed.get(column) or column.lower().replace("-", "").replace("*", "")


def _headline(dataset: str):
    """What the table shows, its unit and the metric behind it (a data.Headline), as the dataset registry has it."""
    return dataset_info(dataset).headline


def _columns(spec: SweepSpec, chains: list[ChainResult], present: set[str]) -> list[str]:
    """The table's columns: Teacher, BAN-1 … BAN-G, Ens*k for each k any chain has, then the control arm's
    columns where any chain has them."""
    columns = [generation_column(g) for g in range(spec.generations + 1)]
    columns += [ensemble_column(k) for k in sorted({e.k for result in chains for e in result.ensembles})]
    return columns + [c for c in (CONTROL, CONTROL_ENSEMBLE) if c in present]


Entry = GenerationRecord | EnsembleRecord


def _entries(result: ChainResult) -> dict[str, Entry]:
    """Column → the chain's record for it."""
    entries: dict[str, Entry] = {generation_column(g.generation): g for g in result.generations}
    entries.update({ensemble_column(e.k): e for e in result.ensembles})
    if result.control is not None:
        entries[CONTROL] = result.control
    if result.control_ensemble is not None:
        entries[CONTROL_ENSEMBLE] = result.control_ensemble
    return entries


def _finished(entry: Entry) -> bool:
    return getattr(entry, "status", "finished") == "finished"  # ensembles exist only when finished


def _metric(entry: Entry | None, name: str) -> float | None:
    if entry is None or not _finished(entry):
        return None
    if name == "test_perplexity":
        return None if entry.test_nll is None else math.exp(entry.test_nll)
    return getattr(entry, name)


def _cell(entry: Entry, metric: str) -> float | str | None:
    if not _finished(entry):
        return "failed"
    value = _metric(entry, metric)
    return None if value is None else DISPLAY[metric][0] * value


def _spread(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
    }


def _paired(entries: list[dict[str, Entry]], column: str, baseline: str, metric: str) -> dict[str, Any]:
    """Paired stats of column − baseline over the chains where both have the metric."""
    pairs = [(_metric(e.get(column), metric), _metric(e.get(baseline), metric)) for e in entries]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    return dataclasses.asdict(stats.paired([a for a, _ in pairs], [b for _, b in pairs]))


def _paired_section(by_chain: list[dict[str, Entry]], columns: list[str], metrics: list[str]) -> dict[str, Any]:
    """Each column − Teacher and each Ens*k − Teacher+Teacher′, per metric, with how they were computed;
    metrics[0] is the headline metric."""
    ensembles = [c for c in columns if c.startswith("Ens*")]
    return {
        "baseline": BASELINE,
        "headline_metric": metrics[0],
        "confidence": stats.CONFIDENCE,
        "interval": "Student t on the mean paired difference",
        "test": "Wilcoxon signed-rank, two-sided; exact (all sign flips) for small n, zeros dropped",
        "minimum_chains_for_any_claim": stats.minimum_chains_for_any_claim(),
        "units": "differences in the metric's own unit: test_error and test_ece as fractions (x100 = points)",
        "vs_teacher": {
            column: {m: _paired(by_chain, column, BASELINE, m) for m in metrics} for column in columns[1:]
        },
        "vs_control_ensemble": {
            column: {m: _paired(by_chain, column, CONTROL_ENSEMBLE, m) for m in metrics} for column in ensembles
        } if CONTROL_ENSEMBLE in columns else {},
    }


def build(
    spec: SweepSpec, chains: list[ChainResult], *, sweep_dir: str, tracking_uri: str, experiment_id: str,
    elapsed_s: float, utilisation: float | None = None, spans: list | None = None, registry: dict | None = None,
    started_at: float | None = None,
) -> dict[str, Any]:
    kind = dataset_kind(spec.data.dataset)
    headline = _headline(spec.data.dataset)
    headline_metric = headline.metric
    metrics = [headline_metric] + [m for m in ("test_error", "test_nll", "test_ece") if m != headline_metric]
    entries = {result.chain: _entries(result) for result in chains}
    columns = _columns(spec, chains, {column for chain_entries in entries.values() for column in chain_entries})
    rows = {chain: {c: _cell(e, headline_metric) for c, e in chain_entries.items()} for chain, chain_entries in entries.items()}
    summary = {
        column: _spread([row[column] for row in rows.values() if isinstance(row.get(column), float)])
        for column in columns
    }
    by_chain = list(entries.values())
    by_metric = {
        column: {
            m: _spread([v for v in (_metric(e.get(column), m) for e in by_chain) if v is not None]) for m in metrics
        }
        for column in columns
    }
    return {
        "sweep": spec.name,
        "spec_hash": spec.spec_hash(),
        "dataset": spec.data.dataset,
        "task": kind,
        "headline": headline.label,
        "unit": headline.unit,
        "metric": spec.search.metric,
        "selection": SELECTION.format(metric=spec.search.metric),
        "variation": VARIATION["shared" if spec.data.shared_split else "independent"],
        "ensembles": {"include_teacher": spec.ensembles.include_teacher},
        "sweep_dir": sweep_dir,
        "elapsed_s": round(elapsed_s, 1),
        "utilisation": utilisation,
        "started_at": started_at,  # wall-clock seconds at which the groups' start_s and end_s count from 0
        "groups": [dataclasses.asdict(span) for span in spans or []],
        "mlflow": {"tracking_uri": tracking_uri, "experiment_id": experiment_id, "registered_model": registry},
        "columns": columns,
        "rows": {str(chain): row for chain, row in rows.items()},
        "summary": summary,
        "metrics": by_metric,
        "paired": _paired_section(by_chain, columns, metrics),
        "chains": [
            {
                "chain": result.chain,
                "data_seed": spec.chain_data(result.chain).seed,  # its split and augmentation (the control arm's too)
                "generations": [dataclasses.asdict(r) for r in result.generations],
                "ensembles": [dataclasses.asdict(e) for e in result.ensembles],
                "ensemble_run_id": result.mlflow_run_id,
                "stopped": result.stopped,
                "control": dataclasses.asdict(result.control) if result.control else None,
                "control_ensemble": dataclasses.asdict(result.control_ensemble) if result.control_ensemble else None,
            }
            for result in chains
        ],
    }


def summary_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Flat MLflow metric names for the sweep's summary run, in the metrics' own units (test_error and
    test_ece as fractions, like the generation runs' metrics):
    `<column>.<metric>.mean|std` over chains, `paired.<column>.<metric>.<stat>` for column − Teacher and
    `paired_vs_control_ensemble.ens<k>.<metric>.<stat>` for Ens*k − (Teacher+Teacher′), with <column>
    one of teacher, ban<k>, ens<k>, control, control_ensemble."""
    metrics: dict[str, float] = {}
    for column, by_metric in report["metrics"].items():
        for metric, spread in by_metric.items():
            for stat in ("mean", "std"):
                if spread[stat] is not None:
                    metrics[f"{metric_slug(column)}.{metric}.{stat}"] = float(spread[stat])
    for section, prefix in (("vs_teacher", "paired"), ("vs_control_ensemble", "paired_vs_control_ensemble")):
        for column, by_metric in report["paired"][section].items():
            for metric, paired in by_metric.items():
                for stat in PAIRED_STATS:
                    if paired[stat] is not None:
                        metrics[f"{prefix}.{metric_slug(column)}.{metric}.{stat}"] = float(paired[stat])
    return metrics


def _format(value: float | str | None) -> str:
    if value is None:
        return "—"
    return value if isinstance(value, str) else f"{value:.2f}"


def _interval(paired: dict[str, Any], metric: str) -> str:
    """'mean [low, high]' of a paired difference, in the metric's display unit."""
    if paired["n"] == 0:
        return "—"
    scale, _, digits = DISPLAY[metric]
    mean = f"{scale * paired['mean']:+.{digits}f}"
    if paired["ci_low"] is None:
        return f"{mean} (one chain)"
    return f"{mean} [{scale * paired['ci_low']:+.{digits}f}, {scale * paired['ci_high']:+.{digits}f}]"


def _counts(paired: dict[str, Any]) -> str:
    if paired["n"] == 0:
        return "—"
    p = "—" if paired["wilcoxon_p"] is None else f"{paired['wilcoxon_p']:.2f}"
    return f"{paired['better']}/{paired['tied']}/{paired['worse']}; p {p}"


def _spread_cell(spread: dict[str, Any], metric: str) -> str:
    scale, _, digits = DISPLAY[metric]
    if spread["mean"] is None:
        return "—"
    if spread["std"] is None:
        return f"{scale * spread['mean']:.{digits}f}"
    return f"{scale * spread['mean']:.{digits}f} ± {scale * spread['std']:.{digits}f}"


def table(report: dict[str, Any]) -> str:
    """Markdown table: a row per chain, mean ± std over chains, then the paired difference to each chain's
    teacher (mean and 95% interval, chains better/tied/worse with the signed-rank p, the verdict), Ens*k
    against Teacher+Teacher′, and test NLL and ECE with their paired differences."""
    columns = report["columns"]
    paired = report["paired"]
    headline = paired["headline_metric"]
    unit = DISPLAY[headline][1]
    lines = ["| Chain | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    def versus(metric: str, cell) -> list[str]:
        return ["—" if c == BASELINE else cell(paired["vs_teacher"][c][metric]) for c in columns]

    for chain, values in report["rows"].items():
        row(chain, [_format(values.get(c)) for c in columns])
    row("mean ± std", [_spread_cell(report["metrics"][c][headline], headline) for c in columns])
    row(f"Δ vs Teacher ({unit}), 95% CI", versus(headline, lambda p: _interval(p, headline)))
    row("better/tied/worse; Wilcoxon p", versus(headline, _counts))
    row("verdict", versus(headline, lambda p: p["verdict"]))
    against = paired["vs_control_ensemble"]
    if against:
        row(
            f"Δ vs {CONTROL_ENSEMBLE} ({unit}), 95% CI",
            [f"{_interval(against[c][headline], headline)}, {against[c][headline]['verdict']}" if c in against else "—"
             for c in columns],
        )
    for metric, label in (("test_nll", "test NLL"), ("test_ece", "ECE")):
        spreads = [report["metrics"][c][metric] for c in columns]
        if any(spread["n"] for spread in spreads):
            scale_unit = " (%)" if DISPLAY[metric][0] == 100 else ""
            row(f"{label}{scale_unit}, mean ± std", [_spread_cell(spread, metric) for spread in spreads])
            row(f"Δ {label} ({DISPLAY[metric][1]}), 95% CI", versus(metric, lambda p, m=metric: _interval(p, m)))
    return "\n".join(lines)


def caption(report: dict[str, Any]) -> str:
    """What the table shows, how to read its paired rows, and the seed-noise band of the control arm."""
    unit = f" ({report['unit']})" if report["unit"] else ""
    ensembles = ""
    if any(c.startswith("Ens*") for c in report["columns"]):
        pool = "generations including the teacher" if report["ensembles"]["include_teacher"] else "student generations"
        ensembles = f" Ens*k averages the softmax outputs of the last k {pool}."
    control = ""
    if CONTROL in report["columns"]:
        control = (
            f" {CONTROL} is the control arm: the teacher's recipe with a fresh seed"
            + (f"; {CONTROL_ENSEMBLE} averages their softmax outputs, the baseline for Ens*k." if CONTROL_ENSEMBLE
               in report["columns"] else ".")
        )
    lines = [f"{report['headline'].capitalize()}{unit} on `{report['dataset']}`; {report['selection']}.{ensembles}{control}"]
    paired = report["paired"]
    headline = paired["headline_metric"]
    diff_unit = DISPLAY[headline][1]
    chains = len(report["chains"])
    needed = paired["minimum_chains_for_any_claim"]
    reading = (
        f"Δ: each column minus the same chain's Teacher in {diff_unit}, the mean over chains with its 95% Student-t "
        "interval; better/tied/worse count chains, p is the two-sided Wilcoxon signed-rank test (exact for few "
        "chains). A column is called better or worse only when its interval excludes 0, else within seed noise."
    )
    if chains == 1:
        reading += " With one chain no claim can be made: there is no spread over seeds to set a difference against."
    elif chains < needed:
        reading += (
            f" With {chains} chains the signed-rank test cannot reach p < 0.05 (it needs {needed}), so a verdict "
            "rests on the t interval, which assumes normal differences."
        )
    if "variation" in report:
        reading += f" {report['variation']}"
    lines.append(reading)
    if CONTROL in report["columns"]:
        noise = paired["vs_teacher"][CONTROL][headline]
        scale, _, digits = DISPLAY[headline]
        if noise["std"] is not None:
            lines.append(
                f"Seed noise ({CONTROL} − Teacher): {_interval(noise, headline)} {diff_unit}, sd {scale * noise['std']:.{digits}f} "
                f"over {noise['n']} chains; one chain's difference within ±{2 * scale * noise['std']:.{digits}f} is what "
                "a fresh seed alone does."
            )
        elif noise["n"]:
            lines.append(f"Seed noise ({CONTROL} − Teacher): {_interval(noise, headline)} {diff_unit}.")
    else:
        lines.append(f"No control arm ({CONTROL}) was trained, so the seed-noise band is not measured.")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    stops = [
        f"- chain {c['chain']} stopped after generation {c['generations'][-1]['generation']}: {c['stopped']}"
        for c in report["chains"]
        if c["stopped"]
    ] + [
        f"- chain {c['chain']} generation {g['generation']} failed: {g['message']}"
        for c in report["chains"]
        for g in c["generations"]
        if g["status"] != "finished"
    ]
    chains = len(report["chains"])
    return "\n".join(
        [
            f"# banray report: {report['sweep']}",
            "",
            caption(report),
            f"{chains} chain(s); std is over chains (sample std)."
            + (" With one chain there is no spread to compare against." if chains == 1 else ""),
            "",
            table(report),
            "",
            f"![{report['headline']} by generation]({PLOT_FILE})",
            "",
            *(["Chains that ended early:", *stops, ""] if stops else []),
            f"Spec hash `{report['spec_hash']}`; MLflow experiment {report['mlflow']['experiment_id']} at "
            f"`{report['mlflow']['tracking_uri']}`; makespan {report['elapsed_s']} s"
            + (f", worker-slot utilisation {100 * report['utilisation']:.0f}%." if report["utilisation"] else "."),
            "",
        ]
    )


def plot(report: dict[str, Any], path: Path) -> None:
    """Each chain's headline number per column (thin lines) and the mean ± std over chains."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on cluster nodes
    import matplotlib.pyplot as plt

    columns = report["columns"]
    positions = range(len(columns))
    figure, axis = plt.subplots(figsize=(1.2 * len(columns) + 3, 4))
    for chain, row in report["rows"].items():
        points = [(i, row.get(c)) for i, c in enumerate(columns) if isinstance(row.get(c), float)]
        if points:
            axis.plot(*zip(*points), marker="o", linewidth=0.8, alpha=0.5, label=f"chain {chain}")
    means = [(i, report["summary"][c]) for i, c in enumerate(columns) if report["summary"][c]["mean"] is not None]
    if means:
        axis.errorbar(
            [i for i, _ in means], [s["mean"] for _, s in means], yerr=[s["std"] or 0 for _, s in means],
            color="black", marker="s", linewidth=2, capsize=4, label="mean ± std",
        )
    axis.set_xticks(list(positions), columns)
    unit = f" ({report['unit']})" if report["unit"] else ""
    axis.set_ylabel(f"{report['headline']}{unit}")
    axis.set_title(f"{report['sweep']}: {report['headline']} by generation")
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:  # a sweep whose every generation failed has nothing to plot
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write(report: dict[str, Any], directory: Path) -> list[Path]:
    paths = [directory / "report.json", directory / "report.md", directory / PLOT_FILE]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(markdown(report))
    plot(report, paths[2])
    return paths
