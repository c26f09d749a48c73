"""The sweep report: the paper's table (Teacher | BAN-1 … BAN-G | Ens*2 … Ens*G, a row per chain and
mean ± std over chains), report.json, report.md and an error-vs-generation plot.

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

from banray.chain import ChainResult
from banray.data import dataset_kind
from banray.spec import SweepSpec

SELECTION = "best trial by {metric} on the validation split, at its best-validation epoch; test split evaluated once on it"
PLOT_FILE = "report.png"


def generation_column(generation: int) -> str:
    return "Teacher" if generation == 0 else f"BAN-{generation}"


def ensemble_column(k: int) -> str:
    return f"Ens*{k}"


def _headline(kind: str) -> tuple[str, str]:
    """(what the table shows, its unit) for a dataset kind."""
    return ("test perplexity", "") if kind == "language_model" else ("test error", "%")


def _value(kind: str, error: float | None, nll: float | None) -> float | None:
    if kind == "language_model":
        return None if nll is None else math.exp(nll)
    return None if error is None else 100 * error


def _cells(kind: str, result: ChainResult) -> dict[str, float | str | None]:
    cells: dict[str, float | str | None] = {}
    for g in result.generations:
        column = generation_column(g.generation)
        cells[column] = _value(kind, g.test_error, g.test_nll) if g.status == "finished" else "failed"
    for e in result.ensembles:
        cells[ensemble_column(e.k)] = _value(kind, e.test_error, e.test_nll)
    return cells


def build(
    spec: SweepSpec, chains: list[ChainResult], *, sweep_dir: str, tracking_uri: str, experiment_id: str,
    elapsed_s: float, utilisation: float | None = None, spans: list | None = None, registry: dict | None = None,
) -> dict[str, Any]:
    kind = dataset_kind(spec.data.dataset)
    headline, unit = _headline(kind)
    columns = [generation_column(g) for g in range(spec.generations + 1)]
    ensemble_ks = sorted({e.k for result in chains for e in result.ensembles})
    columns += [ensemble_column(k) for k in ensemble_ks]
    rows = {result.chain: _cells(kind, result) for result in chains}
    summary = {}
    for column in columns:
        values = [row[column] for row in rows.values() if isinstance(row.get(column), float)]
        summary[column] = {
            "n": len(values),
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None,
        }
    return {
        "sweep": spec.name,
        "spec_hash": spec.spec_hash(),
        "dataset": spec.data.dataset,
        "task": kind,
        "headline": headline,
        "unit": unit,
        "metric": spec.search.metric,
        "selection": SELECTION.format(metric=spec.search.metric),
        "ensembles": {"include_teacher": spec.ensembles.include_teacher},
        "sweep_dir": sweep_dir,
        "elapsed_s": round(elapsed_s, 1),
        "utilisation": utilisation,
        "groups": [dataclasses.asdict(span) for span in spans or []],
        "mlflow": {"tracking_uri": tracking_uri, "experiment_id": experiment_id, "registered_model": registry},
        "columns": columns,
        "rows": {str(chain): row for chain, row in rows.items()},
        "summary": summary,
        "chains": [
            {
                "chain": result.chain,
                "generations": [dataclasses.asdict(r) for r in result.generations],
                "ensembles": [dataclasses.asdict(e) for e in result.ensembles],
                "ensemble_run_id": result.mlflow_run_id,
                "stopped": result.stopped,
            }
            for result in chains
        ],
    }


def _format(value: float | str | None) -> str:
    if value is None:
        return "—"
    return value if isinstance(value, str) else f"{value:.2f}"


def table(report: dict[str, Any]) -> str:
    """Markdown table: a row per chain, then mean ± std over chains."""
    columns = report["columns"]
    lines = ["| Chain | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for chain, row in report["rows"].items():
        lines.append(f"| {chain} | " + " | ".join(_format(row.get(c)) for c in columns) + " |")
    cells = []
    for column in columns:
        stats = report["summary"][column]
        if stats["std"] is None:
            cells.append(_format(stats["mean"]))
        else:
            cells.append(f"{stats['mean']:.2f} ± {stats['std']:.2f}")
    lines.append("| mean ± std | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def caption(report: dict[str, Any]) -> str:
    unit = f" ({report['unit']})" if report["unit"] else ""
    ensembles = ""
    if any(c.startswith("Ens*") for c in report["columns"]):
        pool = "generations including the teacher" if report["ensembles"]["include_teacher"] else "student generations"
        ensembles = f" Ens*k averages the softmax outputs of the last k {pool}."
    return f"{report['headline'].capitalize()}{unit} on `{report['dataset']}`; {report['selection']}.{ensembles}"


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
