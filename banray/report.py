"""The sweep report: a paper-style table (a row per chain, mean ± std, Teacher | BAN-1 … BAN-G).

Numbers are test error in % of each generation's best trial, selected on validation error at the
best-validation epoch; the test split is never used for selection.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

from banray.chain import GenerationRecord
from banray.spec import SweepSpec

SELECTION = "best trial by {metric} on the validation split, at its best-validation epoch; test error evaluated once on it"


def column_name(generation: int) -> str:
    return "Teacher" if generation == 0 else f"BAN-{generation}"


def build(
    spec: SweepSpec, chains: list[list[GenerationRecord]], *, sweep_dir: str, tracking_uri: str, experiment_id: str,
    elapsed_s: float,
) -> dict[str, Any]:
    columns = [column_name(g) for g in range(spec.generations + 1)]
    summary = {}
    for generation, column in enumerate(columns):
        errors = [
            records[generation].test_error
            for records in chains
            if generation < len(records) and records[generation].status == "finished"
        ]
        summary[column] = {
            "n": len(errors),
            "mean": statistics.fmean(errors) if errors else None,
            "std": statistics.stdev(errors) if len(errors) > 1 else None,
        }
    return {
        "sweep": spec.name,
        "spec_hash": spec.spec_hash(),
        "dataset": spec.data.dataset,
        "metric": spec.search.metric,
        "selection": SELECTION.format(metric=spec.search.metric),
        "sweep_dir": sweep_dir,
        "elapsed_s": round(elapsed_s, 1),
        "mlflow": {"tracking_uri": tracking_uri, "experiment_id": experiment_id},
        "columns": columns,
        "summary": summary,
        "chains": [
            {"chain": chain, "generations": [dataclasses.asdict(r) for r in records]}
            for chain, records in enumerate(chains)
        ],
    }


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def table(report: dict[str, Any]) -> str:
    """Markdown table of test error (%): a row per chain, then mean ± std over chains."""
    columns = report["columns"]
    lines = ["| Chain | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for chain in report["chains"]:
        by_generation = {g["generation"]: g for g in chain["generations"]}
        cells = []
        for generation in range(len(columns)):
            record = by_generation.get(generation)
            cells.append("failed" if record and record["status"] != "finished" else _percent(record and record["test_error"]))
        lines.append(f"| {chain['chain']} | " + " | ".join(cells) + " |")
    cells = []
    for column in columns:
        stats = report["summary"][column]
        if stats["mean"] is None:
            cells.append("—")
        elif stats["std"] is None:
            cells.append(f"{100 * stats['mean']:.2f}")
        else:
            cells.append(f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}")
    lines.append("| mean ± std | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    stops = [
        f"- chain {c['chain']} stopped at generation {g['generation']}: {g['message']}"
        for c in report["chains"]
        for g in c["generations"]
        if g["status"] != "finished"
    ]
    chains = len(report["chains"])
    return "\n".join(
        [
            f"# banray report: {report['sweep']}",
            "",
            f"Test error (%) on `{report['dataset']}`; {report['selection']}.",
            f"{chains} chain(s); std is over chains (sample std)."
            + (" With one chain there is no spread to compare against." if chains == 1 else ""),
            "",
            table(report),
            "",
            *(["Stopped chains:", *stops, ""] if stops else []),
            f"Spec hash `{report['spec_hash']}`; MLflow experiment {report['mlflow']['experiment_id']} at "
            f"`{report['mlflow']['tracking_uri']}`; wall time {report['elapsed_s']} s.",
            "",
        ]
    )


def write(report: dict[str, Any], directory: Path) -> list[Path]:
    json_path, md_path = directory / "report.json", directory / "report.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown(report))
    return [json_path, md_path]
