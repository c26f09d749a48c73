"""The sweep report: the paper's table (Teacher | BAN-1 … BAN-G | Ens*2 … Ens*G, then the control arm
Teacher′ and Teacher+Teacher′; a row per chain and mean ± std over chains), the paired differences to
each chain's teacher with their intervals and verdicts, calibration, report.json, report.md (three
tables: the paper's, is it real, calibration) and a plot of the lineage by generation over the paired
differences.

Numbers are each generation's best trial, selected on the validation split at its best-validation
epoch, evaluated once on the test split: test error in % for classification, test perplexity for
language models.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

from banray.catalog.data import dataset_info, dataset_kind
from banray.catalog.models import uses_dropout
from banray.columns import (
    CONTROL_COLUMN,
    CONTROL_ENSEMBLE_COLUMN,
    EQUAL_BUDGET_COLUMN,
    LABEL_SMOOTHING_COLUMN,
    TEACHER_COLUMN,
    comparison_name,
    comparisons,
    control_ensemble_column,
    ensemble_column,
    generation_column,
    is_control_ensemble,
    metric_slug,
    own_baseline,
    report_column,
)
from banray.records import CONTROL_ARM, ChainResult, EnsembleRecord, GenerationRecord
from banray.results import stats
from banray.spec import SweepSpec

# In the variation sentence exactly when the chains share the split or augmentation they would otherwise each draw.
SHARED_SPLIT = "(data.shared_split)"
SELECTION = "best trial by {metric} on the validation split, at its best-validation epoch; test split evaluated once on it"
PLOT_FILE = "report.png"
LEGEND_CHAINS = 10  # the most chains the plot's legend names one by one
# Metric → (factor to its display unit, the unit of a difference, decimals shown).
DISPLAY = {
    "test_error": (100, "points", 2),
    "test_ece": (100, "points", 2),
    "test_nll": (1, "nats", 3),
    "test_perplexity": (1, "perplexity", 2),
    "test_agreement": (100, "points", 2),  # fidelity: top-1 agreement with the teacher
    "test_teacher_kl": (1, "nats", 4),  # fidelity: KL(teacher ‖ student)
}


def _and(items: list[str]) -> str:
    """'a', 'a and b', 'a, b, and c'."""
    return " and ".join(items) if len(items) < 3 else f"{', '.join(items[:-1])}, and {items[-1]}"


def variation(spec: SweepSpec) -> str:
    """Which sources of variation the intervals over chains cover, from what the dataset's registry entry says a
    seed changes (its augmentation, a validation split carved with the data seed, a shuffled order) and whether
    the sweep's models use dropout. Chains draw their own split and augmentation unless data.shared_split."""
    info = dataset_info(spec.data.dataset)
    models = [spec.model] + ([spec.student] if spec.student is not None else [])
    varies = ["initialisation"] + (["dropout"] if any(uses_dropout(m.arch, m.kwargs) for m in models) else [])
    varies += ["data order"] if info.shuffled else []
    own = [what for what, drawn in (("train/validation split", info.carved_validation), ("augmentation", info.augmented))
           if drawn]
    unaugmented = (f"; `{info.name}` has no training augmentation"
                   if info.kind == "classification" and not info.augmented else "")
    if own and not spec.data.shared_split:
        arms = spec.side_arms()
        control = f" ({CONTROL_COLUMN} shares its chain's)" if arms == [CONTROL_ARM] else (
            " (the control arms share their chain's)" if arms else "")
        each = f"each chain's own {' and '.join(own)}{control}"
        return f"The intervals cover what differs between chains: {_and(varies + [each])}{unaugmented}."
    if own:
        shared = " and one ".join("augmentation stream" if what == "augmentation" else what for what in own)
        return f"The intervals cover {_and(varies)} only: every chain trains on one {shared} {SHARED_SPLIT}{unaugmented}."
    order = "" if info.shuffled else ", read in the same order"
    return (f"The intervals cover {_and(varies)} only: every chain trains on the same train, validation and test "
            f"splits of `{info.name}`{order}{unaugmented}.")


def _headline(dataset: str):
    """What the table shows, its unit and the metric behind it (a data.Headline), as the dataset registry has it."""
    return dataset_info(dataset).headline


def _columns(spec: SweepSpec, present: set[str]) -> list[str]:
    """The table's columns: Teacher, BAN-1 … BAN-G, then the ensembles and control arms' columns (Teacher′, the
    control ensembles, Equal-budget, Label-smoothing) that any chain has."""
    generations = {generation_column(g) for g in range(spec.generations + 1)}
    return [c for c in spec.report_columns() if c in generations or c in present]


Entry = GenerationRecord | EnsembleRecord


def _entries(result: ChainResult) -> dict[str, Entry]:
    """Column → the chain's record for it."""
    entries: dict[str, Entry] = {generation_column(g.generation): g for g in result.generations}
    entries.update({ensemble_column(e.k): e for e in result.ensembles})
    entries.update({report_column(0, arm): record for arm, record in result.arms.items()})
    entries.update({control_ensemble_column(e.k): e for e in result.control_ensembles})
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


def _paired_section(by_chain: list[dict[str, Entry]], columns: list[str], metrics: list[str],
                   spec: SweepSpec) -> dict[str, Any]:
    """Each column − Teacher, and each column with a baseline of its own (Ens*k: the same-size control ensemble;
    Equal-budget: the last BAN; Label-smoothing: BAN-1) minus it, per metric, with how they were computed;
    metrics[0] is the headline metric. The primary comparison keeps its plain 95% verdict, every other one is
    judged on its Holm-adjusted p over all the others (per metric)."""
    primary = spec.primary_comparison()
    made = comparisons(columns, spec.generations)
    # holm_p None: the primary comparison, judged on its own
    found = {pair: {m: {**_paired(by_chain, *pair, m), "holm_p": None} for m in metrics} for pair in made}
    for metric in metrics:
        _holm_adjust([found[pair][metric] for pair in made if pair != primary])
    own = {c: b for c, b in made if b != TEACHER_COLUMN}
    return {
        "baseline": TEACHER_COLUMN,
        "headline_metric": metrics[0],
        "confidence": stats.CONFIDENCE,
        "interval": "Student t on the mean paired difference",
        "test": "Wilcoxon signed-rank, two-sided; exact (all sign flips) for small n, zeros dropped",
        "minimum_chains_for_any_claim": stats.minimum_chains_for_any_claim(),
        "units": "differences in the metric's own unit: test_error and test_ece as fractions (x100 = points)",
        "primary": {"column": primary[0], "baseline": primary[1]},
        "adjustment": "Holm over every comparison but the primary one, per metric, on the paired t-test's p",
        "vs_teacher": {c: found[(c, b)] for c, b in made if b == TEACHER_COLUMN},
        "own_baselines": own,
        "vs_own_baseline": {c: found[(c, b)] for c, b in own.items()},
        # Ens*k whose same-size baseline was not trained: never compared with a smaller ensemble
        "no_same_size_baseline": {c: own_baseline(c, spec.generations) for c in columns
                                  if c.startswith("Ens*") and c not in own},
    }


def _holm_adjust(family: list[dict[str, Any]]) -> None:
    """Adds each comparison's Holm-adjusted p and replaces its verdict with the adjusted one."""
    for paired, adjusted in zip(family, stats.holm([p["t_p"] for p in family])):
        paired["holm_p"] = adjusted
        paired["verdict"] = stats.adjusted_verdict(stats.Paired(**{k: v for k, v in paired.items() if k != "holm_p"}),
                                                   adjusted)


def _fidelity(spec: SweepSpec, by_chain: list[dict[str, Entry]]) -> dict[str, Any]:
    """Each student generation's top-1 agreement with its teacher and KL(teacher ‖ student) on the test split,
    mean ± std over chains."""
    students = [generation_column(g) for g in range(1, spec.generations + 1)]
    return {
        column: {name: _spread([v for v in (_metric(e.get(column), f"test_{name}") for e in by_chain) if v is not None])
                 for name in ("agreement", "teacher_kl")}
        for column in students
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
    columns = _columns(spec, {column for chain_entries in entries.values() for column in chain_entries})
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
        "variation": variation(spec),
        "ensembles": {"include_teacher": spec.ensembles.include_teacher},
        "teacher_from": spec.distill.teacher_from,
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
        "paired": _paired_section(by_chain, columns, metrics, spec),
        "fidelity": _fidelity(spec, by_chain),
        "chains": [_chain_record(spec, result) for result in chains],
    }


def _chain_record(spec: SweepSpec, result: ChainResult) -> dict[str, Any]:
    return {
        "chain": result.chain,
        "data_seed": spec.chain_data(result.chain).seed,  # its split and augmentation (the side arms' too)
        "generations": [dataclasses.asdict(r) for r in result.generations],
        "ensembles": [dataclasses.asdict(e) for e in result.ensembles],
        "ensemble_run_id": result.mlflow_run_id,
        "stopped": result.stopped,
        "arms": {arm: dataclasses.asdict(record) for arm, record in result.arms.items()},
        "control_ensembles": [dataclasses.asdict(e) for e in result.control_ensembles],
    }


def summary_metrics(report: dict[str, Any]) -> list[tuple[str, float, int]]:
    """The sweep's summary run in MLflow, as (key, value, step), in the report's units (errors and ECE in %,
    `_pct` in the key; differences in points). At step k, the mean over chains of generation k's scores under
    the keys the chain runs log (val_error_pct, test_error_pct, test_nll, test_ece_pct), so each of MLflow's
    charts draws the mean beside the chains (and test_perplexity, language models' headline). `vs_teacher.<column>.
    <headline>.<stat>`, minus the same chain's Teacher: the last BAN (mean, ci_low, ci_high, n, wilcoxon_p), the
    largest ensemble (mean, ci_low, ci_high) and Teacher′ (mean, std: the seed noise); their `vs_` sorts after
    the scores in MLflow's chart view, which orders charts by key. The other paired statistics are not here."""
    def key(metric: str) -> str:
        return f"{metric}_pct" if DISPLAY[metric][0] == 100 else metric

    metrics: list[tuple[str, float, int]] = []
    generations = [c for c in report["columns"] if c == TEACHER_COLUMN or c.startswith("BAN-")]
    for step, column in enumerate(generations):
        val = [g["val_error"] for c in report["chains"] for g in c["generations"]
               if g["generation"] == step and g["status"] == "finished"]
        metrics += [("val_error_pct", 100 * statistics.fmean(val), step)] if val else []
        metrics += [(key(m), DISPLAY[m][0] * spread["mean"], step)
                    for m, spread in report["metrics"][column].items() if spread["mean"] is not None]
    headline = report["paired"]["headline_metric"]
    versus = {c: by_metric[headline] for c, by_metric in report["paired"]["vs_teacher"].items()
              if by_metric[headline]["n"]}
    bans = [c for c in generations if c in versus]
    ensembles = [c for c in report["columns"] if c.startswith("Ens*") and c in versus]
    wanted = {**({bans[-1]: ("mean", "ci_low", "ci_high", "n", "wilcoxon_p")} if bans else {}),
              **({ensembles[-1]: ("mean", "ci_low", "ci_high")} if ensembles else {}),
              **({CONTROL_COLUMN: ("mean", "std")} if CONTROL_COLUMN in versus else {})}
    for column, stats_wanted in wanted.items():
        for stat in stats_wanted:
            value = versus[column][stat]
            scale = DISPLAY[headline][0] if stat in ("mean", "std", "ci_low", "ci_high") else 1
            if value is not None:
                metrics.append((f"vs_teacher.{metric_slug(column)}.{key(headline)}.{stat}", scale * value, 0))
    return [(name, round(float(value), 9), step) for name, value, step in metrics]  # no float noise in the UI


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
        return ["—" if c == TEACHER_COLUMN else cell(paired["vs_teacher"][c][metric]) for c in columns]

    def own(column: str) -> str:
        if column in paired["no_same_size_baseline"]:
            return f"no same-size baseline ({paired['no_same_size_baseline'][column]} not trained)"
        if column not in paired["vs_own_baseline"]:
            return "—"
        found, baseline = paired["vs_own_baseline"][column][headline], paired["own_baselines"][column]
        return f"{_interval(found, headline)} vs {baseline}, {_verdict(paired, column, baseline, found)}"

    for chain, values in report["rows"].items():
        row(chain, [_format(values.get(c)) for c in columns])
    row("mean ± std", [_spread_cell(report["metrics"][c][headline], headline) for c in columns])
    row(f"Δ vs Teacher ({unit}), 95% CI", versus(headline, lambda p: _interval(p, headline)))
    row("better/tied/worse; Wilcoxon p", versus(headline, _counts))
    row("verdict", ["—" if c == TEACHER_COLUMN else _verdict(paired, c, TEACHER_COLUMN, paired["vs_teacher"][c][headline])
                    for c in columns])
    if paired["own_baselines"] or paired["no_same_size_baseline"]:
        row(f"Δ vs its own baseline ({unit}), 95% CI", [own(c) for c in columns])
    for name, label in FIDELITY:
        spreads = {c: by_name[name] for c, by_name in report["fidelity"].items()}
        if any(spread["n"] for spread in spreads.values()):
            row(label, [_spread_cell(spreads[c], f"test_{name}") if c in spreads else "—" for c in columns])
    for metric, label in (("test_nll", "test NLL"), ("test_ece", "ECE")):
        spreads = [report["metrics"][c][metric] for c in columns]
        if any(spread["n"] for spread in spreads):
            scale_unit = " (%)" if DISPLAY[metric][0] == 100 else ""
            row(f"{label}{scale_unit}, mean ± std", [_spread_cell(spread, metric) for spread in spreads])
            row(f"Δ {label} ({DISPLAY[metric][1]}), 95% CI", versus(metric, lambda p, m=metric: _interval(p, m)))
    return "\n".join(lines)


def _verdict(paired: dict[str, Any], column: str, baseline: str, found: dict[str, Any]) -> str:
    """A comparison's verdict; the primary comparison's is marked as such."""
    primary = paired["primary"] == {"column": column, "baseline": baseline}
    return f"{found['verdict']} (primary)" if primary else found["verdict"]


FIDELITY = (("agreement", "agreement with its teacher (%)"), ("teacher_kl", "KL(teacher ‖ it) (nats)"))


# What each control column is, for the caption.
CONTROL_COLUMNS = {
    CONTROL_COLUMN: f"{CONTROL_COLUMN} is the control arm: the teacher's recipe with a fresh seed.",
    CONTROL_ENSEMBLE_COLUMN: f"{CONTROL_ENSEMBLE_COLUMN} averages the softmax outputs of the Teacher and Teacher′ "
                             "(Teacher+k×Teacher′: of the Teacher and k teacher′s), the same-size baseline of Ens*2 "
                             "(Ens*k+1); an ensemble is never set against a smaller one.",
    EQUAL_BUDGET_COLUMN: f"{EQUAL_BUDGET_COLUMN} is one model trained for the chain's total epochs (the teacher's "
                         "recipe stretched), set against the last BAN generation.",
    LABEL_SMOOTHING_COLUMN: f"{LABEL_SMOOTHING_COLUMN} is the teacher's recipe with label smoothing, set against BAN-1.",
}


def _judged(paired: dict[str, Any]) -> str:
    """How verdicts are reached: the primary comparison at 95%, the others Holm-adjusted."""
    primary = comparison_name(paired["primary"]["column"], paired["primary"]["baseline"])
    others = sum(1 for c in paired["vs_teacher"]) + len(paired["vs_own_baseline"]) - 1
    return (f"The primary comparison, {primary}, is called better or worse when its interval excludes 0; each of the "
            f"{others} other comparisons only when its Holm-adjusted p (paired t-test, over those {others}) is below "
            "0.05; else within seed noise.")


def caption(report: dict[str, Any]) -> str:
    """What the table shows, how to read its paired rows, and the seed-noise band of the control arm."""
    unit = f" ({report['unit']})" if report["unit"] else ""
    ensembles = ""
    if any(c.startswith("Ens*") for c in report["columns"]):
        pool = "generations including the teacher" if report["ensembles"]["include_teacher"] else "student generations"
        ensembles = f" Ens*k averages the softmax outputs of the last k {pool}."
    control = "".join(f" {text}" for column, text in CONTROL_COLUMNS.items() if column in report["columns"])
    teachers = ""
    if report.get("teacher_from") == "ensemble":  # absent from the reports of sweeps before it could be set
        teachers = (" Each BAN-k learned from the ensemble teacher of its chain's generations 0 … k−1 (the average "
                    "of their softmax outputs), not from BAN-(k−1) alone.")
    lines = [f"{report['headline'].capitalize()}{unit} on `{report['dataset']}`; {report['selection']}.{teachers}"
             f"{ensembles}{control}"]
    paired = report["paired"]
    headline = paired["headline_metric"]
    diff_unit = DISPLAY[headline][1]
    chains = len(report["chains"])
    needed = paired["minimum_chains_for_any_claim"]
    reading = (
        f"Δ: each column minus the same chain's Teacher (or its own baseline) in {diff_unit}, the mean over chains "
        "with its 95% Student-t interval; better/tied/worse count chains, p is the two-sided Wilcoxon signed-rank "
        f"test (exact for few chains). {_judged(paired)}"
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
    if CONTROL_COLUMN in report["columns"]:
        noise = paired["vs_teacher"][CONTROL_COLUMN][headline]
        scale, _, digits = DISPLAY[headline]
        if noise["std"] is not None:
            lines.append(
                f"Seed noise ({CONTROL_COLUMN} − Teacher): {_interval(noise, headline)} {diff_unit}, sd {scale * noise['std']:.{digits}f} "
                f"over {noise['n']} chains; one chain's difference within ±{2 * scale * noise['std']:.{digits}f} is what "
                "a fresh seed alone does."
            )
        elif noise["n"]:
            lines.append(f"Seed noise ({CONTROL_COLUMN} − Teacher): {_interval(noise, headline)} {diff_unit}.")
    else:
        lines.append(f"No control arm ({CONTROL_COLUMN}) was trained, so the seed-noise band is not measured.")
    return "\n".join(lines)


# Characters that start markup in GitHub markdown: emphasis, code, links, HTML, headings, table cells,
# strike-through, entities, math, and the backslash itself.
_MARKUP = re.compile(r"([\\`*_\[\]<>#|~&$])")


def escape_markdown(text: object) -> str:
    """`text` as literal markdown on one line: every markup character backslash-escaped and line breaks made
    spaces, so a value can neither end a table cell or row nor start emphasis, a link or HTML."""
    return _MARKUP.sub(r"\\\1", " ".join(str(text).splitlines()))


def _escape_prose(line: str) -> str:
    """One line of our own text: its `code` spans (registry names, hashes, paths) stay code, the rest is
    escaped, so Ens*k or a p < 0.05 read literally."""
    parts = re.split(r"(`[^`]*`)", line)
    return "".join(part if i % 2 else escape_markdown(part) for i, part in enumerate(parts))


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(escape_markdown(cell) for cell in cells) + " |"

    return [line(header), "|---" * len(header) + "|", *(line(row) for row in rows)]


def _paper_table(report: dict[str, Any]) -> list[str]:
    """The paper's layout: a row per chain and mean ± std over chains, a column per generation, ensemble and
    control-arm model."""
    columns = report["columns"]
    headline = report["paired"]["headline_metric"]
    rows = [[chain, *(_format(values.get(c)) for c in columns)] for chain, values in report["rows"].items()]
    rows.append(["mean ± std", *(_spread_cell(report["metrics"][c][headline], headline) for c in columns)])
    return _md_table(["Chain", *columns], rows)


def _evidence(paired: dict[str, Any], metric: str) -> list[str]:
    """Mean difference, 95% interval, better/tied/worse, Wilcoxon p, Holm-adjusted p and verdict, in the display
    unit."""
    if paired["n"] == 0:
        return ["—"] * 7 + [paired["verdict"]]
    scale, _, digits = DISPLAY[metric]
    interval = "— (one chain)" if paired["ci_low"] is None else (
        f"[{scale * paired['ci_low']:+.{digits}f}, {scale * paired['ci_high']:+.{digits}f}]")
    p, holm = ("—" if paired.get(key) is None else f"{paired[key]:.2f}" for key in ("wilcoxon_p", "holm_p"))
    counts = [str(paired[key]) for key in ("better", "tied", "worse")]
    return [f"{scale * paired['mean']:+.{digits}f}", interval, *counts, p, holm, paired["verdict"]]


def _evidence_table(report: dict[str, Any]) -> list[str]:
    """Is it real: each column minus the same chain's Teacher, then each column minus its own baseline; the
    primary comparison first and marked."""
    paired = report["paired"]
    headline = paired["headline_metric"]
    unit = DISPLAY[headline][1]
    header = ["Column", "minus (same chain)", f"Δ {report['headline']} ({unit})", f"95% interval ({unit})",
              "better", "tied", "worse", "Wilcoxon p", "Holm p", "verdict"]
    pairs = [(c, TEACHER_COLUMN, by_metric) for c, by_metric in paired["vs_teacher"].items()]
    pairs += [(c, paired["own_baselines"][c], by_metric) for c, by_metric in paired["vs_own_baseline"].items()]
    primary = (paired["primary"]["column"], paired["primary"]["baseline"])
    pairs.sort(key=lambda pair: pair[:2] != primary)
    rows = [[f"{c} (primary)" if (c, b) == primary else c, b, *_evidence(by_metric[headline], headline)]
            for c, b, by_metric in pairs]
    rows += [[c, wanted, *["—"] * 7, "no same-size baseline: set control.teachers higher"]
             for c, wanted in paired["no_same_size_baseline"].items()]
    return _md_table(header, rows)


def _fidelity_table(report: dict[str, Any]) -> list[str]:
    """Each student's top-1 agreement with its teacher and KL(teacher ‖ student), mean ± std over chains."""
    header = ["Column", *(label for _, label in FIDELITY)]
    rows = [[column, *(_spread_cell(by_name[name], f"test_{name}") for name, _ in FIDELITY)]
            for column, by_name in report["fidelity"].items()]
    return _md_table(header, rows) if any(by_name["agreement"]["n"] for by_name in report["fidelity"].values()) else []


CALIBRATION = (("test_nll", "test NLL"), ("test_ece", "ECE"))


def _calibration_table(report: dict[str, Any]) -> list[str]:
    """Test NLL and ECE per column, mean ± std over chains and the paired difference to the Teacher."""
    header = ["Column"]
    for metric, label in CALIBRATION:
        scale, unit, _ = DISPLAY[metric]
        header += [f"{label} ({'%' if scale == 100 else unit}), mean ± std", f"Δ {label} ({unit}), 95% CI"]
    vs_teacher = report["paired"]["vs_teacher"]
    rows = [
        [column, *(cell for metric, _ in CALIBRATION for cell in (
            _spread_cell(report["metrics"][column][metric], metric),
            "—" if column == TEACHER_COLUMN else _interval(vs_teacher[column][metric], metric)))]
        for column in report["columns"]
    ]
    return _md_table(header, rows)


def _early_ends(report: dict[str, Any]) -> list[str]:
    """Chains that stopped and generations that failed, their messages escaped (they quote errors)."""
    stops = [
        f"- chain {c['chain']} stopped after generation {c['generations'][-1]['generation']}: "
        f"{escape_markdown(c['stopped'])}"
        for c in report["chains"]
        if c["stopped"]
    ] + [
        f"- chain {c['chain']} generation {g['generation']} failed: {escape_markdown(g['message'])}"
        for c in report["chains"]
        for g in c["generations"]
        if g["status"] != "finished"
    ]
    return ["Chains that ended early:", *stops, ""] if stops else []


def markdown(report: dict[str, Any]) -> str:
    """report.md: the caption, then three tables (the paper's, is it real, calibration), the plot and notes."""
    chains = len(report["chains"])
    unit = f" ({report['unit']})" if report["unit"] else ""
    diff_unit = DISPLAY[report["paired"]["headline_metric"]][1]
    arches = list(dict.fromkeys(g["arch"] for c in report["chains"] for g in c["generations"]))
    return "\n".join(
        [
            f"# banray report: {escape_markdown(report['sweep'])}",
            "",
            *([f"Architecture: {', '.join(escape_markdown(a) for a in arches)}", ""] if arches else []),
            *(f"{_escape_prose(line)}\n" for line in caption(report).splitlines()),
            f"{chains} chain(s); std is over chains (sample std)."
            + (" With one chain there is no spread to compare against." if chains == 1 else ""),
            "",
            "## " + _escape_prose(f"{report['headline'].capitalize()}{unit} per chain (lower is better)"),
            "",
            *_paper_table(report),
            "",
            "## " + _escape_prose(
                f"Is it real? Each column minus the same chain's baseline, Δ {report['headline']} in {diff_unit}"),
            "",
            *_evidence_table(report),
            "",
            "## Calibration",
            "",
            *_calibration_table(report),
            "",
            *(["## Fidelity: does each student match its teacher? (test split)", "", *_fidelity_table(report), ""]
              if _fidelity_table(report) else []),
            f"![{escape_markdown(report['headline'])} by generation]({PLOT_FILE})",
            "",
            *_early_ends(report),
            _escape_prose(
                f"Spec hash `{report['spec_hash']}`; MLflow experiment {report['mlflow']['experiment_id']} at "
                f"`{report['mlflow']['tracking_uri']}`; makespan {report['elapsed_s']} s"
                + (f", worker-slot utilisation {100 * report['utilisation']:.0f}%." if report["utilisation"] else ".")
            ),
            "",
        ]
    )


def _number(value: Any) -> float:
    """A table value as a float, NaN for a failed or missing one (a line breaks there)."""
    return float(value) if isinstance(value, (int, float)) else math.nan


def _positions(columns: list[str]) -> dict[str, int]:
    """x in the lineage panel: generation k and Ens*k at k, the control arm in its own slots at the right."""
    generations = [c for c in columns if c == TEACHER_COLUMN or c.startswith("BAN-")]
    x = {c: g for g, c in enumerate(generations)}
    x.update({c: int(c.removeprefix("Ens*")) for c in columns if c.startswith("Ens*")})
    x.update({c: len(generations) + i for i, c in enumerate(c for c in columns if _is_control(c))})
    return x


def _is_control(column: str) -> bool:
    """A control arm's column: Teacher′, a control ensemble, Equal-budget or Label-smoothing."""
    return column in (CONTROL_COLUMN, EQUAL_BUDGET_COLUMN, LABEL_SMOOTHING_COLUMN) or is_control_ensemble(column)


def _lineage(axis, report: dict[str, Any], x: dict[str, int]) -> None:
    """Teacher → BAN-1 → … → BAN-G, a thin line per chain and the mean over chains in bold."""
    generations = [c for c in report["columns"] if c == TEACHER_COLUMN or c.startswith("BAN-")]
    xs = [x[c] for c in generations]
    for chain, row in report["rows"].items():
        axis.plot(xs, [_number(row.get(c)) for c in generations], marker="o", linewidth=0.8, alpha=0.6,
                  label=_chain_label(chain, report["rows"]), gid=f"lineage:{chain}")
    axis.plot(xs, [_number(report["summary"][c]["mean"]) for c in generations], color="black", marker="s",
              linewidth=2.5, label="mean over chains (black)", gid="lineage:mean")


def _chain_label(chain: str, rows: dict[str, Any]) -> str:
    """A legend entry per chain for a few chains; past LEGEND_CHAINS one for them all, on the first: 48 entries
    once took the plot's whole height."""
    if len(rows) <= LEGEND_CHAINS:
        return f"chain {chain}"
    return f"{len(rows)} chains, a line each" if chain == next(iter(rows)) else "_nolegend_"


def _side_markers(axis, report: dict[str, Any], x: dict[str, int]) -> None:
    """Ens*k and the control arm as unconnected markers (each chain, and the mean in black): they are not
    generations, so no line runs through them."""
    styles = {CONTROL_COLUMN: ("v", "tab:red"), EQUAL_BUDGET_COLUMN: ("s", "tab:orange"),
              LABEL_SMOOTHING_COLUMN: ("P", "tab:brown")}
    for column in report["columns"]:
        if not _is_control(column) and not column.startswith("Ens*"):
            continue
        marker, color = styles.get(column, ("^", "tab:purple") if is_control_ensemble(column) else ("D", "tab:green"))
        values = [_number(row.get(column)) for row in report["rows"].values()]
        values = [v for v in values if not math.isnan(v)]
        if values:
            # hollow, so they do not read as a chain's generation of the same colour
            axis.scatter([x[column]] * len(values), values, marker=marker, facecolors="none", edgecolors=color,
                         label=column, gid=f"markers:{column}")
        if report["summary"][column]["mean"] is not None:
            axis.scatter([x[column]], [report["summary"][column]["mean"]], marker=marker, color="black", s=70,
                         zorder=3, gid=f"mean:{column}")


def _noise_band(axis, report: dict[str, Any]) -> None:
    """Shades the Teacher mean ± one run's seed noise. Teacher′ − Teacher is two seeds of one recipe on the
    same chain's split, so its sd / √2 is seed noise alone; the teacher's std over chains, the fallback
    without a control arm, also holds what else differs between chains (their splits)."""
    headline = report["paired"]["headline_metric"]
    teacher = report["summary"][TEACHER_COLUMN]
    control = report["paired"]["vs_teacher"].get(CONTROL_COLUMN, {}).get(headline)
    if control and control["std"] is not None:
        half = DISPLAY[headline][0] * control["std"] / math.sqrt(2)
        label = "seed noise: Teacher mean ± sd(Teacher′ − Teacher)/√2"
    elif teacher["std"] is not None:
        half, label = teacher["std"], "Teacher mean ± std over chains"
    else:
        return  # one chain and no control arm: nothing measures the noise
    axis.axhspan(teacher["mean"] - half, teacher["mean"] + half, color="grey", alpha=0.2, label=label,
                 gid="seed-noise")


def _differences(axis, report: dict[str, Any]) -> None:
    """Each column minus the same chain's Teacher: the mean over chains with its 95% interval, a bare point
    where one chain gives no interval, and the zero line."""
    headline = report["paired"]["headline_metric"]
    scale, unit, _ = DISPLAY[headline]
    columns = report["columns"][1:]
    kinds = (("BAN-k − Teacher", "o", "tab:blue"), ("Ens*k − Teacher", "D", "tab:green"),
             ("control arm − Teacher", "v", "tab:red"))
    shown = 0
    for kind, (label, marker, color) in enumerate(kinds):
        points = [(i, report["paired"]["vs_teacher"][c][headline]) for i, c in enumerate(columns)
                  if _kind(c) == kind and report["paired"]["vs_teacher"][c][headline]["n"]]
        spread = [(i, p) for i, p in points if p["ci_low"] is not None]
        bare = [(i, p) for i, p in points if p["ci_low"] is None]
        shown += len(points)
        if spread:
            means = [scale * p["mean"] for _, p in spread]
            below = [m - scale * p["ci_low"] for m, (_, p) in zip(means, spread)]
            above = [scale * p["ci_high"] - m for m, (_, p) in zip(means, spread)]
            axis.errorbar([i for i, _ in spread], means, yerr=[below, above], fmt=marker, color=color, capsize=4,
                          label=f"{label}, 95% interval")
        if bare:
            axis.scatter([i for i, _ in bare], [scale * p["mean"] for _, p in bare], marker=marker, color=color,
                         label=f"{label} (one chain, no interval)")
    axis.axhline(0, color="black", linewidth=0.8, gid="zero")
    if not shown:
        axis.text(0.5, 0.5, "no paired differences: no column has a finished chain beside its Teacher",
                  transform=axis.transAxes, ha="center")
    axis.set_xticks(range(len(columns)), columns)
    axis.set_xlim(-0.5, max(len(columns), 1) - 0.5)
    axis.set_ylabel(f"Δ {report['headline']} vs Teacher ({unit})")
    axis.set_title("Minus the same chain's Teacher, mean over chains (lower is better)")


def _kind(column: str) -> int:
    """0 a student generation, 1 an ensemble, 2 a control arm (the order of _differences' kinds)."""
    return 2 if _is_control(column) else 1 if column.startswith("Ens*") else 0


def figure(report: dict[str, Any]):
    """The report's matplotlib Figure: the lineage panel over the paired-differences panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = _positions(report["columns"])
    result = Figure(figsize=(max(11.0, 1.2 * len(x) + 6), 8), layout="constrained")
    FigureCanvasAgg(result)  # files only, no display on cluster nodes; no pyplot, so no global state
    lineage, differences = result.subplots(2, 1, height_ratios=[3, 2])
    _noise_band(lineage, report)
    _lineage(lineage, report, x)
    _side_markers(lineage, report, x)
    ticks = sorted(set(x.values()))
    lineage.set_xticks(ticks, ["\n".join(c for c in x if x[c] == tick) for tick in ticks])
    lineage.set_xlim(-0.5, ticks[-1] + 0.5)
    unit = f" ({report['unit']})" if report["unit"] else ""
    lineage.set_xlabel("generation (Ens*k at k; the control arm at the right)")
    lineage.set_ylabel(f"{report['headline']}{unit}")
    lineage.set_title(f"{report['sweep']}: {report['headline']} by generation", parse_math=False)
    _differences(differences, report)
    for axis in (lineage, differences):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:  # a sweep whose every generation failed has nothing to show
            axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return result


def plot(report: dict[str, Any], path: Path) -> None:
    figure(report).savefig(path, dpi=100)


def write(report: dict[str, Any], directory: Path) -> list[Path]:
    paths = [directory / "report.json", directory / "report.md", directory / PLOT_FILE]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(markdown(report))
    plot(report, paths[2])
    return paths
