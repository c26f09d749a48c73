"""bench/results/summary.md from the JSON results of the benches.

Run: .venv/bin/python -m bench.summary   (after the benches)
"""

from __future__ import annotations

import json

from bench.common import RESULTS, machine

TARGETS = {"whole_epoch": 0.90, "distill_step": 1.10, "sweep_makespan": 1.10, "gpu_check": 1.5,
           "quickstart": 3.0, "scale": 1.10, "views": 8.0}


def _rounds(case: dict) -> str:
    ratios = sorted(case.get("ratios", [case["ratio"]]))
    return f"; the median of {len(ratios)} rounds: {', '.join(f'{x:.2f}' for x in ratios)}" if len(ratios) > 1 else ""


def main() -> None:
    results = {name: json.loads((RESULTS / f"{name}.json").read_text()) for name in TARGETS
               if (RESULTS / f"{name}.json").exists()}
    first = next(iter(results.values()), {"machine": machine()})
    m = first["machine"]
    lines = [
        "# banray benchmarks",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; Python {m['python']}, "
        f"torch {m['torch']}, Ray {m['ray']}; {m['platform']}; run "
        + ", ".join(f"{name} {r['machine']['date']} on {r['machine']['cpu']}" for name, r in results.items()) + ".",
        "",
        "| Bench | Measured | Target | Met |",
        "|---|---|---|---|",
    ]
    if "whole_epoch" in results:
        for c in results["whole_epoch"]["results"]:
            target = 0.97 if "wrn" in c["case"] else 0.90
            lines.append(f"| (a) {c['case']}: plain loop's epoch ÷ the epoch a trial runs ({c['plain_epoch_s']:.3f} s "
                         f"÷ {c['banray_epoch_s']:.3f} s{_rounds(c)}) | {c['ratio']:.3f} | ≥ {target} | "
                         f"{'yes' if c['ratio'] >= target else 'no'} |")
    if "distill_step" in results:
        r = results["distill_step"]
        lines.append(f"| (b) cached BAN epoch ÷ CE epoch, cache build shared by {r['trials_sharing_the_cache']} trials | "
                     f"{r['cached_ratio']:.3f} | ≤ 1.10 | {'yes' if r['cached_ratio'] <= 1.10 else 'no'} |")
        lines.append(f"| (b) online BAN epoch ÷ CE epoch (for comparison) | {r['online_ratio']:.3f} | about 1.33 | – |")
    if "sweep_makespan" in results:
        for r in results["sweep_makespan"]["runs"]:
            trial = sum(r["trial_wall_s"].values()) / len(r["trial_wall_s"])
            overhead = sum(r["group_overhead_s"].values()) / len(r["group_overhead_s"])
            met = "yes" if r["ratio_vs_trials"] <= 1.10 else "no"
            lines.append(
                f"| (c) sweep makespan ÷ lower bound from the trials' wall times; trials of {r['epochs']} epochs "
                f"({trial:.0f} s each on average), {overhead:.1f} s per group outside its trial | "
                f"{r['ratio_vs_trials']:.3f} | ≤ 1.10 | {met} |"
            )
            lines.append(f"| (c) the same sweep ÷ lower bound from the generation groups' spans | "
                         f"{r['ratio_vs_groups']:.3f} | – | – |")
            if "ratio_vs_plain" in r:
                target, met = ("≤ 1.05", "yes" if r["ratio_vs_plain"] <= 1.05 else "no") if r["epochs"] >= 400 else ("–", "–")
                lines.append(f"| (c) the same sweep ÷ lower bound from the same work in a plain PyTorch loop "
                             f"({r['makespan_s']:.0f} s ÷ {r['lower_bound_from_plain_s']:.0f} s) | "
                             f"{r['ratio_vs_plain']:.3f} | {target} | {met} |")
    if "quickstart" in results:
        for r in results["quickstart"]["runs"]:
            trial, group = r["trial_overhead_s"]["median"], r["group_overhead_s"]["median"]
            lines += [
                f"| (e) `banray sweep sweeps/quickstart.yaml` ÷ the same work as a plain PyTorch script "
                f"({r['banray_wall_s']:.0f} s ÷ {r['plain_wall_s']:.1f} s) | {r['ratio']:.1f} | ≤ 3.0 | "
                f"{'yes' if r['ratio'] <= 3.0 else 'no'} |",
                f"| (e) median per-trial overhead (trial run − its epochs) | {trial:.2f} s | ≤ 1 s | "
                f"{'yes' if trial <= 1 else 'no'} |",
                f"| (e) median per-group overhead (group span − its trials) | {group:.2f} s | ≤ 2 s | "
                f"{'yes' if group <= 2 else 'no'} |",
            ]
    if "scale" in results:
        lines += _scale_lines(results["scale"])
    if "views" in results:
        lines += _views_lines(results["views"])
    if "gpu_check" in results:
        lines += _gpu_check_lines(results["gpu_check"])
    lines += ["", "Details: " + ", ".join(f"`{name}.json`" for name in results) + " (what each measured is in its "
              "`what` field and in bench/README.md).", ""]
    lines += NOTES
    (RESULTS / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _gpu_check_lines(result: dict) -> list[str]:
    """(h) banray's training core against the plain DataLoader loop on a GPU (bench.gpu_check)."""
    target = result["targets"] if isinstance(result["targets"], dict) else {}
    lines = []
    for row in result["throughput"]:
        plain, core = row["plain"], row["banray"]
        busy = f"{core['busy_percent']:.0f}%" if core["busy_percent"] is not None else "not read"
        lines.append(f"| (h) {result['device']}, {row['model']} batch {row['batch']}: images/s plain fp32 DataLoader "
                     f"{plain['images_per_s']:.0f} → banray's core {core['images_per_s']:.0f} (GPU busy {busy}, views "
                     f"{core['views_share']:.1%} of the epoch) | {row['speedup']:.2f}× | see bench/README.md | – |")
    lines += [f"| (h) {check} | – | – | {'yes' if met else 'no'} |" for check, met in target.items()]
    return lines


def _views_lines(result: dict) -> list[str]:
    views, epoch = result["view_pipeline"], result["whole_epoch"]
    lines = [f"| (g) training views, 1 thread: batched ÷ the old per-sample path ({views['batched_images_per_s']:.0f} ÷ "
             f"{views['old_per_sample_images_per_s']:.0f} images/s, {views['images']} CIFAR-shaped images) | "
             f"{views['speedup']:.1f}× | ≥ 8× | {'yes' if views['speedup'] >= 8 else 'no'} |"]
    if "ratio_before_over_after" in epoch:
        ratio = epoch["ratio_before_over_after"]
        lines.append(f"| (g) WRN-16-4 CPU epoch ({epoch['train_samples']} CIFAR-shaped images), before ÷ after "
                     f"({epoch['before_epoch_s']:.2f} s ÷ {epoch['after_epoch_s']:.2f} s) | {ratio:.2f} | ≥ 1 (no slower) | "
                     f"{'yes' if ratio >= 1 else 'no'} |")
    return lines


def _scale_lines(result: dict) -> list[str]:
    runs = result["runs"]
    lines = [f"| (f) `banray sweep` of {r['chains']} chains ({r['groups']} one-epoch groups): makespan ÷ groups "
             f"({r['makespan_s']:.0f} s ÷ {r['groups']}; wall {r['wall_s']:.0f} s, {r['after_dag_s']:.0f} s after the "
             f"DAG) | {r['makespan_per_group_s']:.2f} s | – | – |" for r in runs]
    ratio = result["per_group_ratio_largest_to_smallest"]
    lines.append(f"| (f) makespan per group at {runs[-1]['chains']} chains ÷ at {runs[0]['chains']} chains | "
                 f"{ratio:.2f} | ≤ 1.10 | {'yes' if ratio <= 1.10 else 'no'} |")
    return lines


NOTES = [
    "Notes:",
    "",
    "- **No GPU was available**: images/s of WRN-16-4, WRN-28-10 and DenseNet-BC-100-12 on a GPU (issue #32) are "
    "not recorded; `bench.gpu_check` measures them on a CUDA machine. "
    "bf16 autocast and channels_last are on by default only on CUDA "
    "(`auto`), so these CPU numbers run in fp32 without them.",
    "- Everything runs on CPU with 1 thread per trial (`resources.cpus_per_worker: 1`), as a trial's worker does. "
    "Timings on this shared 2-core machine drift by tens of percent within minutes: (b) lands within about "
    "±0.04 of the figures above when repeated, (a) on the digits CNN moves by up to ±0.15 between runs (hence its "
    "rounds).",
    "- (a): the epoch a trial runs, as a one-trial group runs it (Tune, the Tune trial driving its warm host, "
    "checkpoints when the validation error is at least as good, the report, MLflow from the group's process), "
    "against a plain loop doing train + validation + keeping the best weights, timed just before and just after "
    "the group (the mean of the two; this machine's speed drifts by tens of percent within minutes). On WRN-16-4 "
    "the framework is within noise (0.97-1.08). On the digits CNN the median of five rounds is just below the "
    "target (0.894 on the Intel Xeon; 0.84 on the AMD EPYC before the group logged its trials' epochs to MLflow "
    "in batches, at most every 2 s, instead of once per 0.1 s epoch); single runs gave 0.65-0.93. It was "
    "0.71-0.80 while the trial waited after every report for Tune's controller to ask for the next, and about "
    "0.75 while the host waited for that round trip on every checkpointed epoch (digits' validation error ties so "
    "often that nearly every epoch is checkpointed); the host now hands the checkpoint's files over and trains "
    "on, and its report costs under 1 ms (15-20 ms before). The worker loop alone, in one process without Ray, "
    "runs at 0.93-1.02x the plain loop (its checkpoint of an improved epoch costs 5 ms); the rest is the sweep's "
    "other processes on the 2 cores the host shares with them.",
    "- (b): the online BAN overhead measured here (about 1.2–1.25×) is below the issue's 1.33× because on one CPU "
    "thread the student's backward pass weighs more than on a GPU. The cached ratio includes the cache's build "
    "(one teacher pass per epoch over the augmented views) divided by the 4 trials sharing it; the lookup alone "
    "costs nothing measurable (`cached_lookup_only_ratio`).",
    "- (c): the DAG itself adds nothing: the makespan equals the lower bound from the generation groups' spans "
    "(ratio ≈ 1.00). Against the plain work (the same chains' generations trained by plain_quickstart's loop, "
    "the chains side by side) the 400-epoch case is 1.39× (1.70-1.78× while the groups ran in a warm runner of "
    "their own, 1.85× before the warm hosts), not ≤ 1.05: a banray trial of this tiny model took 44-65 s where "
    "the plain loop took 30-49 s with the two chains sharing the 2 cores with the sweep's driver and evaluations "
    "(the plain loop's own time moves by up to 60% within a run here); each chain's first trial waits for its "
    "host to start (62-65 s against 44-55 s for the later ones). A group spends 1.8-5 s outside its trial "
    "(the first group 13-17 s before the groups moved into the driver).",
    "- (e): the quickstart as a user runs it, on a 2-core AMD EPYC: 39.9-47.8 s against 13.6-16.6 s for the "
    "plain script in the last three pairs, 2.70-3.02x (median 2.93; on a 2-core Intel Xeon the day before, "
    "39.0-39.4 s against 13.0-13.6 s, 2.89-3.02x, and 2.9-3.3x when it ran the plain script in 9.0-10.9 s; "
    "3.5-3.6x before a local cluster for trials on hosts ran without Ray's dashboard and the command skipped "
    "Python's module teardown at exit; 3.4-3.7x on the EPYC in a slow hour; "
    "264-352 s before issue 15). One-worker trials train in warm hosts, one per worker slot for the whole sweep, "
    "started by the driver as soon as Ray is up, that import torch and load its compiler front end once; the "
    "Tune trial that drives a host imports no torch; digits and its splits come from a user cache of arrays; "
    "the groups' Tune runs run in threads of the driver, which imports them (and Ray Tune, the report's "
    "statistics and plots, MLflow's SQL store) while ray.init starts the local cluster; evaluations run in one "
    "warm, niced process; a new sweep's MLflow store is a copy of an empty one; trials never import MLflow, and "
    "their epochs reach it in batches. What is left: torch's import and Ray's start before the DAG, the hosts' "
    "start (about 4.5 s of CPU each on 2 shared cores), which keeps the first groups 3.2-3.6 s outside their "
    "trials, and per later group Tune's setup and its trial's fresh process (Ray's worker and Ray Tune's "
    "imports, which pull in pandas, about 1.4 s of CPU: a Tune actor cannot outlive its Tune run, and Ray gives "
    "an actor a new process, never a worker that has run anything), 1.8-2.2 s. A sweep that started its own "
    "cluster exits 0.6 s after its report (1.5 s before its autoscaler monitor was killed first). Per-trial overhead <= 1 s is met "
    "(0.09-0.16 s) and <= 3x in two pairs of three; the median group overhead, 2.36-2.90 s (2.17-2.24 s on the "
    "Xeon), is not <= 2 s. Before this "
    "run the bench counted the control arms' whole spans (4.5-5 s) as overhead: it looked for their "
    "generation runs under the wrong name.",
    "- (f): sweeps of 8, 32 and 64 chains of one-epoch groups (teacher + BAN-1, Ens*2 per chain) on a 2-core AMD "
    "EPYC shared with three other engineers' tests and sweeps (load average 8-28 during the run; the 64-chain "
    "sweep's last minute at 28): 2.21, 2.07 and 2.38 s of makespan per group, 1.07x from 8 to 64 chains, as flat "
    "as this machine measures (issue 31 gives 2.3 s per group at 8 and 32 chains before every MLflow call went "
    "through one bound per process). A one-epoch group's span is mostly waiting: 9-16% worker-slot utilisation, every chain's "
    "Tune run side by side in the driver. The time after the DAG (each chain's ensembles in the evaluations' "
    "runner, the registry's versions, the report) grew from 5 s to 11 s and 38 s, more than the chains; it is "
    "where 32 chains once died on MLflow's connection pool, and the first place to look at larger sweeps.",
]

if __name__ == "__main__":
    main()
