"""`banray plan`: what a sweep will run and cost, whether its storage and tracking work, and how many
chains it needs to tell a gain from seed noise, before anything is trained or any worker is reserved."""

from __future__ import annotations

import json
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import torch

from banray.catalog.data import _CIFAR, DATASETS, PTB_FILES, DatasetInfo, DatasetMissing, dataset_info
from banray.catalog.models import build_model
from banray.columns import TEACHER_COLUMN, CONTROL_COLUMN, control_ensemble_column, generation_column
from banray.records import BUDGET_ARM, arm_title
from banray.results import stats, tracking
from banray.results.report import SHARED_SPLIT
from banray.spec import Range, SpecError, SweepSpec
from banray.storage import is_remote, refusal, use_endpoint

# The fixed cost of a trial by what trains it (resources.trainer), measured on a 2-core machine: a Tune trial
# that starts and stops a TorchTrainer; one that trains on a warm host, 0.1 s of its own and its share of its
# group's 3-3.5 s (2 trials a group; bench/results/quickstart.json).
TRIAL_OVERHEAD_S = {"train": 12.0, "trial": 2.0}
# Without a finished sweep, chains are tabulated for these spreads of paired differences, in multiples of
# the gain to detect.
SD_MULTIPLES = (0.5, 1, 2, 3, 4)


class PlanCheckFailed(Exception):
    """Storage or tracking is not usable; the message says which and why."""


def _value(setting) -> float:
    return setting.midpoint() if isinstance(setting, Range) else setting


@dataclass(frozen=True)
class Work:
    groups: int
    trials: int
    steps_per_epoch: int
    steps: int  # optimizer steps over the whole sweep, if no trial is stopped early

    @classmethod
    def of(cls, spec: SweepSpec) -> Work:
        dataset = dataset_info(spec.data.dataset)
        batch = int(_value(spec.train.batch_size))
        if dataset.kind == "language_model":
            per_epoch = max(1, dataset.train_size // (batch * spec.train.bptt))
        else:
            per_epoch = math.ceil(dataset.train_size * (1 - spec.data.val_fraction) / batch)
        groups = spec.chains * (spec.generations + 1 + len(spec.side_arms()))  # a group per side arm and chain
        trials = groups * spec.search.trials
        epochs = spec.chains * spec.search.trials * (chain_epochs(spec) + sum(arm_epochs(spec).values()))
        return cls(groups, trials, per_epoch, epochs * per_epoch)


def chain_epochs(spec: SweepSpec) -> int:
    """Epochs one trial of each of a chain's generations trains, added up."""
    return (spec.generations + 1) * spec.train.epochs


def arm_epochs(spec: SweepSpec) -> dict[str, int]:
    """Side arm → the epochs one trial of it trains."""
    return {arm: spec.budget_train().epochs if arm == BUDGET_ARM else spec.train.epochs for arm in spec.side_arms()}


def control_lines(spec: SweepSpec) -> list[str]:
    """What each control arm adds to a chain, and which Ens*k lack a same-size baseline."""
    epochs, control = arm_epochs(spec), spec.control
    added = sum(epochs.values()) / chain_epochs(spec)
    lines = [f"Control arms per chain (+{100 * added:.0f}% of the chains' training):"] if epochs else []
    if control.teachers:
        ensembles = ", ".join(control_ensemble_column(k) for k in range(2, control.teachers + 2)) or "none"
        lines.append(f"  {control.teachers} teacher′(s), {spec.train.epochs} epochs each: seed noise; control "
                     f"ensembles {ensembles}")
    if control.equal_budget:
        lines.append(f"  equal budget: one model for {epochs[BUDGET_ARM]} epochs (lr_milestones "
                     f"{spec.budget_train().lr_milestones or 'none'}), against BAN-{spec.generations}")
    if control.label_smoothing is not None:
        lines.append(f"  label smoothing ε = {control.label_smoothing:g}: {spec.train.epochs} epochs, against BAN-1")
    needed = teachers_needed(spec)
    if needed > control.teachers:
        lines.append(f"  Ens*{needed + 1} needs control.teachers: {needed} for a same-size baseline (this spec has "
                     f"{control.teachers}); without it the report says 'no same-size baseline'")
    return lines


def teachers_needed(spec: SweepSpec) -> int:
    """The teacher′s the largest Ens*k needs for its same-size baseline (k − 1), 0 without ensembles."""
    sizes = [int(c.removeprefix("Ens*")) for c in spec.report_columns() if c.startswith("Ens*")]
    return max(sizes, default=1) - 1


def _build(key: str, model_spec, dataset: DatasetInfo, input_shape: tuple[int, ...]) -> torch.nn.Module:
    """The spec's `key` model built for the dataset's classes and input shape, as the sweep's preflight words
    a failure."""
    try:
        return build_model(model_spec.arch, num_classes=dataset.num_classes, input_shape=input_shape, **model_spec.kwargs)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{key}.kwargs: {model_spec.arch} cannot be built with {model_spec.kwargs}: {exc}") from None


def _random_batch(dataset: DatasetInfo, input_shape: tuple[int, ...], batch: int, device) -> torch.Tensor:
    """A batch of the dataset's shape: token ids (BPTT steps × batch) or (batch, *input_shape) samples."""
    if dataset.kind == "language_model":
        return torch.randint(0, dataset.num_classes, (*input_shape, batch), device=device)
    return torch.randn(batch, *input_shape, device=device)


def time_steps(spec: SweepSpec, generation: int, steps: int) -> tuple[float, str]:
    """Seconds per training step of `generation`'s model on random data of the dataset's shape, on this
    machine (its GPU if it has one); a teacher forward pass is included for students."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset = dataset_info(spec.data.dataset)
    batch = max(1, int(_value(spec.train.batch_size)) // spec.resources.workers_per_trial)
    language = dataset.kind == "language_model"
    input_shape = dataset.model_input_shape(spec.train.bptt)
    key = "model" if generation == 0 or spec.student is None else "student"
    model = _build(key, spec.model_of(generation), dataset, input_shape).to(device)
    teacher = None
    if generation > 0:
        teacher = _build("model", spec.model, dataset, input_shape).to(device).eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = _random_batch(dataset, input_shape, batch, device)

    def step() -> None:
        if teacher is not None:
            with torch.inference_mode():
                teacher(x)
        out = model(x)
        logits = out[0] if language else out
        loss = logits.float().logsumexp(dim=-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    try:
        step()  # warm-up: allocations, cuDNN autotuning
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as exc:  # a model can build and still not take the input (e.g. too narrow for the image)
        raise SpecError(
            f"{key}: {spec.model_of(generation).arch} with {spec.model_of(generation).kwargs} cannot take "
            f"{spec.data.dataset}'s input of shape {input_shape}: {str(exc).splitlines()[0]}"
        ) from None
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    return (time.perf_counter() - start) / steps, name


def check_storage(spec: SweepSpec) -> str:
    """Write a marker under the storage root, read it back and remove it (and any local folder made for it)."""
    use_endpoint(spec.storage_endpoint)
    root = spec.storage if is_remote(spec.storage) else str(Path(spec.storage).expanduser().resolve())
    try:
        fs, path = pafs.FileSystem.from_uri(root)
    except (OSError, ValueError) as exc:
        raise PlanCheckFailed(f"storage: cannot open {root}: {exc}") from None
    created = []
    if not is_remote(root):
        probe = Path(root)
        while not os.path.exists(probe):  # False, not an error, for a name too long
            created.append(probe)
            probe = probe.parent
    marker = f"{path}/.banray-plan-{uuid.uuid4().hex[:8]}"
    text = b"banray plan check"
    try:
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(marker) as stream:
            stream.write(text)
        with fs.open_input_stream(marker) as stream:
            if stream.read() != text:
                raise OSError("the marker read back differs from what was written")
    except OSError as exc:
        raise PlanCheckFailed(f"storage: cannot write to {refusal(exc, root)}") from None
    finally:
        try:
            fs.delete_file(marker)
        except OSError:
            pass  # it was never written
        for folder in created:
            if os.path.isdir(folder):
                folder.rmdir()
    return f"{root} is writable (a marker was written, read back and removed)"


def check_tracking(spec: SweepSpec) -> str:
    """Ask a tracking server for an answer; look at a local store read-only, creating nothing (a mistyped
    path must not leave an empty MLflow database behind); the default local store lives in storage,
    checked above."""
    uri = spec.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return "a SQLite store in the sweep folder (checked with storage)"
    if uri.startswith(("http://", "https://")):
        problem = tracking.server_problem(uri)
        if problem:
            raise PlanCheckFailed(f"tracking.uri: {problem}")
        return f"{uri} answers"
    store = tracking.local_store(uri)
    if store is None:  # a database server (postgresql://, mysql://, …) or a plugin's scheme
        try:
            with tracking.impatient_http():  # a database that is away fails the check now, not after retries
                tracking.Tracking(uri, spec.name, None).client().search_experiments(max_results=1)
        except Exception as exc:  # any backend's failure means the sweep could not track
            raise PlanCheckFailed(f"tracking.uri: {uri} cannot be used: {exc}") from None
        return f"{uri} answers"
    if store.problem:
        raise PlanCheckFailed(f"tracking.uri: {uri}: {store.problem}")
    if store.exists:
        return f"{uri}: an MLflow store at {store.path} (looked at read-only)"
    if store.path.exists():
        return f"{uri}: {store.path} is empty; the sweep will set up an MLflow store in it"
    folder = store.path.parent
    if not folder.is_dir():
        raise PlanCheckFailed(
            f"tracking.uri: {uri}: there is no MLflow store at {store.path}, and its folder {folder} does not "
            "exist (a typo? create the folder if a new store is meant to go there)"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PlanCheckFailed(f"tracking.uri: {uri}: there is no MLflow store at {store.path}, and its folder "
                              f"{folder} is not writable, so the sweep could not create one")
    return f"{uri}: no MLflow store at {store.path} yet; the sweep will create it there"


def check_data(spec: SweepSpec) -> str:
    """Whether the dataset's files are under data.root in the on-disk form its loader reads (banray.catalog.data), or,
    with data.download, can be downloaded there; PlanCheckFailed says what is missing and where it looked."""
    name = spec.data.dataset
    root = Path(os.path.expanduser(spec.data.root)).absolute()
    if name in _CIFAR:
        return _check_cifar(name, root, spec.data.download)
    if name == "ptb":
        return _check_ptb(root)
    try:  # the other datasets ship with a dependency or are generated: building one is quick
        DATASETS[name].build(spec.data.root, False)
    except (DatasetMissing, ImportError) as exc:
        raise PlanCheckFailed(f"data.dataset: {name} cannot be loaded: {exc}") from None
    return f"{name} needs no files (it ships with a dependency or is generated)"


def _check_cifar(name: str, root: Path, download: bool) -> str:
    """torchvision's extracted folder with every batch file, each matching its MD5 sum as torchvision checks it."""
    from torchvision import datasets
    from torchvision.datasets import cifar

    dataset_class = getattr(datasets, _CIFAR[name][0])
    base, url = dataset_class.base_folder, dataset_class.url
    folder = root / base
    files = [*dataset_class.train_list, *dataset_class.test_list, [dataset_class.meta["filename"], dataset_class.meta["md5"]]]
    missing = [file for file, _ in files if not (folder / file).is_file()]
    if not missing:
        corrupt = [file for file, md5 in files if not cifar.check_integrity(str(folder / file), md5)]
        if corrupt:
            raise PlanCheckFailed(f"data.root: {', '.join(corrupt)} in {folder} do not match torchvision's MD5 sums "
                                  f"(corrupted, or another release): put the extracted '{base}' folder from {url} there again")
        return f"{name}: the {len(files)} files of '{base}' are in {root} (MD5 sums checked)"
    if download:
        return _check_download(name, root, url)
    found = f"{folder} lacks {', '.join(missing)}" if folder.is_dir() else f"there is no folder {folder}"
    archive = f"; the archive {dataset_class.filename} is there: extract it" if (root / dataset_class.filename).is_file() else ""
    raise PlanCheckFailed(
        f"data.root: {name} is not in {root}: {found}{archive}; set data.download: true on a machine with internet "
        f"access, or put the extracted '{base}' folder (from {url}) inside {root}"
    )


def _check_download(name: str, root: Path, url: str) -> str:
    """A download into `root` must be able to write there; that `url` answers from here is only a warning, as
    the driver that downloads may run elsewhere."""
    import requests

    existing = root
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PlanCheckFailed(f"data.root: {name} would be downloaded into {root}, but {existing} is not writable")
    try:
        answer = requests.head(url, timeout=10, allow_redirects=True)
        problem = f"answered HTTP {answer.status_code}" if answer.status_code >= 400 else None
    except requests.RequestException as exc:
        problem = f"does not answer from here ({type(exc).__name__})"
    if problem is None:
        return f"{name} is not in {root} yet; the sweep will download it there from {url} (it answers from here)"
    return (f"warning: {name} is not in {root} and {url} {problem}: the sweep's driver downloads it, so it needs "
            "internet access; or put the extracted files there by hand")


def _check_ptb(root: Path) -> str:
    missing = [file for file in PTB_FILES.values() if not (root / file).is_file()]
    empty = [file for file in PTB_FILES.values() if file not in missing and (root / file).stat().st_size == 0]
    if missing or empty:
        found = ", ".join([f"{file} not found" for file in missing] + [f"{file} is empty" for file in empty])
        raise PlanCheckFailed(f"data.root: ptb reads {', '.join(PTB_FILES.values())} in {root}: {found}; put the Penn "
                              "Treebank files (Mikolov's 'simple-examples/data' folder) there (they cannot be downloaded)")
    return f"ptb: {', '.join(PTB_FILES.values())} are in {root}"


def check_cluster(spec: SweepSpec, address: str) -> str:
    """Connect to the Ray cluster at `address` and check that one trial fits it, as the sweep checks once it
    has connected; a host:port that does not accept connections fails in seconds (ray.init waits minutes)."""
    import ray

    from banray import ray_internals
    from banray.trial.slots import slot_capacity

    _reachable(address)
    started = not ray.is_initialized()
    if started:
        try:
            with ray_internals.connecting_to(address):
                ray.init(address=address, logging_config=ray.LoggingConfig(log_level="ERROR"), log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise PlanCheckFailed(f"--address: cannot connect to Ray at {address}: {exc}") from None
    try:
        cluster = ray.cluster_resources()
    finally:
        if started:
            ray.shutdown()
    resources = spec.resources
    has = f"{cluster.get('CPU', 0):g} CPU / {cluster.get('GPU', 0):g} GPU"
    capacity = slot_capacity(resources, cluster)
    if capacity < 1:
        raise PlanCheckFailed(
            f"resources: a trial needs {resources.workers_per_trial} worker(s) × {resources.cpus_per_worker:g} CPU / "
            f"{resources.gpus_per_worker:g} GPU, but the cluster at {address} has {has}"
        )
    wanted = spec.chains * spec.search.trials
    return f"{address} has {has}: {capacity} trial(s) at a time ({wanted} for all chains' trials at once)"


def _reachable(address: str) -> None:
    host_port = address.removeprefix("ray://")
    host, _, port = host_port.rpartition(":")
    if "://" in host_port or not host or not port.isdigit():
        return  # 'auto', or a form ray.init resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise PlanCheckFailed(f"--address: nothing accepts connections at {address} ({exc.strerror or exc})") from None


def describe(spec: SweepSpec, calibrate_steps: int = 0) -> list[str]:
    work = Work.of(spec)
    resources = spec.resources
    per_trial = f"{resources.workers_per_trial} worker(s) × ({resources.cpus_per_worker:g} CPU"
    per_trial += f", {resources.gpus_per_worker:g} GPU)" if resources.gpus_per_worker else ")"
    parallel = spec.chains * spec.search.trials
    lines = [
        f"Sweep '{spec.name}' (spec hash {spec.spec_hash()}) on {spec.data.dataset}",
        f"DAG: {spec.chains} chain(s) × ({spec.generations + 1} generations"
        + "".join(f" + {arm_title(arm)}" for arm in spec.side_arms())
        + f") = {work.groups} groups of "
        f"{spec.search.trials} trial(s), {work.trials} trials in all",
    ]
    for chain in range(spec.chains):
        steps = " → ".join(
            f"gen{g} ({spec.model_of(g).arch}, {spec.objective_of(g) if g == 0 else _label(spec)})"
            for g in range(spec.generations + 1)
        )
        lines.append(f"  chain {chain}: {steps}")
    if spec.distill.teacher_from == "ensemble":
        lines.append(_ensemble_teacher_line(spec))
    for generation in sorted({0, min(1, spec.generations)}):
        space = spec.search_space(generation)
        what = "generation 0" if generation == 0 else "generations ≥ 1"
        searched = ", ".join(f"{k} {v.kind} {v.values()}" for k, v in space.items()) or "nothing (trials differ by seed)"
        lines.append(f"  {what} search: {searched}")
    lines.append(
        f"  early stopping: {'ASHA, grace ' + str(spec.search.grace_period) + ' epoch(s)' if spec.search.uses_asha() else 'off'}; "
        f"warm start: {'on' if spec.search.warm_start else 'off'}"
        + (f"; chain stop when improvement < {spec.chain_stop.min_improvement}" if spec.chain_stop else "")
    )
    lines += control_lines(spec)
    lines += [
        f"Worker slots: each trial takes {per_trial}; all chains' trials at once need {parallel} slot(s) = "
        f"{parallel * resources.workers_per_trial * resources.cpus_per_worker:g} CPU"
        + (f", {parallel * resources.workers_per_trial * resources.gpus_per_worker:g} GPU" if resources.gpus_per_worker else ""),
        f"Work: {spec.train.epochs} epoch(s) × {work.steps_per_epoch} steps per trial; {work.steps:,} optimizer steps "
        f"in all (an upper bound when ASHA stops trials early)",
    ]
    if calibrate_steps:
        seconds, device = time_steps(spec, min(1, spec.generations), calibrate_steps)
        overhead = TRIAL_OVERHEAD_S[resources.engine()]
        worker_hours = (work.steps * seconds + work.trials * overhead) * resources.workers_per_trial / 3600
        lines.append(
            f"Estimate: {seconds * 1000:.1f} ms per step (timed over {calibrate_steps} steps on this machine's {device}) "
            f"→ about {worker_hours:,.1f} worker-hours, {overhead:.0f} s of Ray overhead per trial included"
        )
    else:
        lines.append("Estimate: pass --calibrate N to time N training steps here and convert the work to worker-hours")
    return lines + chain_warnings(spec.chains)


def chain_warnings(chains: int) -> list[str]:
    """Why `chains` chains cannot support a claim that a generation beats its teacher, if they cannot."""
    needed = stats.minimum_chains_for_any_claim()
    if chains == 1:
        return [(
            "Warning: with 1 chain the report can make no claim that any generation or ensemble beats the teacher: "
            f"there is no spread over seeds to compare against (the t interval needs 2 chains, the signed-rank test {needed})"
        )]
    if chains < needed:
        return [(
            f"Warning: with {chains} chains the signed-rank test cannot reach p < {stats.ALPHA:g} (its smallest p is "
            f"2/2^{chains} = {2 / 2**chains:.3g}; it needs {needed} chains), so a verdict would rest on the t interval alone"
        )]
    return []


def load_report(location: str, spec: SweepSpec) -> dict:
    """A finished sweep's report.json: a local path or a URI (s3://…); a folder stands for its report.json."""
    use_endpoint(spec.storage_endpoint)
    if not location.endswith(".json"):
        location = location.rstrip("/") + "/report.json"
    try:
        if "://" in location:
            fs, path = pafs.FileSystem.from_uri(location)
            with fs.open_input_stream(path) as stream:
                report = json.loads(stream.read())
        else:
            report = json.loads(Path(location).expanduser().read_text())
    except OSError as exc:
        raise PlanCheckFailed(f"--from-report: cannot read {refusal(exc, location)}") from None
    except ValueError as exc:
        raise PlanCheckFailed(f"--from-report: cannot read {location}: {exc}") from None
    if not isinstance(report, dict) or not {"rows", "columns", "dataset"} <= report.keys():
        raise PlanCheckFailed(f"--from-report: {location} is not a banray report.json (no rows, columns, dataset)")
    return report


def chains_for_gain(spec: SweepSpec, gain: float, from_report: str | None = None) -> list[str]:
    """How many chains detect a mean gain of `gain` over the teacher at 80% power (two-sided paired t-test,
    α = 0.05): from the spread of the paired differences in the report.json of a finished sweep at
    `from_report` (BAN-1 − Teacher and Teacher′ − Teacher, in the table's unit), or, without one,
    tabulated for a range of spreads. Raises PlanCheckFailed if the report cannot be read."""
    unit = dataset_info(spec.data.dataset).headline.gain_unit
    lines = [(
        f"Chains to detect a gain of {gain:g} {unit} over the teacher with {stats.POWER:.0%} power "
        f"(two-sided paired t-test, α = {stats.ALPHA:g}; needed = fewest chains reaching that power):"
    )]
    needed: list[tuple[int, int]] = []  # (by the measured sd, by its upper bound) per comparison
    if from_report is not None:
        report = load_report(from_report, spec)
        lines.append(f"  from {from_report} ({report['dataset']}, {len(report['rows'])} chain(s)):")
        if report["dataset"] != spec.data.dataset:
            lines.append(f"  note: that sweep ran on {report['dataset']}, this one runs on {spec.data.dataset}")
        # The caption names data.shared_split only where the chains would otherwise each draw their own data;
        # where a dataset's data seed changes nothing, data.shared_split changes nothing either.
        shared_then = SHARED_SPLIT in report.get("variation", "")
        seeded = all(name in DATASETS and dataset_info(name).seeded_data for name in {report["dataset"], spec.data.dataset})
        if "variation" in report and shared_then != spec.data.shared_split and seeded:
            lines.append(
                "  note: that sweep's chains " + ("shared one split and augmentation stream, this spec's chains draw "
                "their own: expect a larger spread" if shared_then else "drew their own splits, this spec's share "
                "one (data.shared_split): expect a smaller spread")
            )
        measured, needed = _measured_spreads(report, gain)
        lines += measured
    if not needed:
        lines.append(
            "  no measured spread to go by" + ("" if from_report else " (give a finished sweep with --from-report)")
            + "; by the sd of the paired differences: " + ", ".join(f"sd {m * gain:g} → {stats.chains_needed(gain, m * gain)}" for m in SD_MULTIPLES)
        )
        lines.append(
            "  for scale: on digits two teachers differing only by seed differ by 0.8–1.7 points of test error; "
            "the paper's BAN and BAN-1 columns (the same recipe, other seeds) differ by up to 0.66 points on CIFAR-100"
        )
    else:
        most, most_upper = max(n for n, _ in needed), max(n for _, n in needed)
        verdict = "enough" if spec.chains >= most else f"too few: it would detect {gain:g} {unit} less than {stats.POWER:.0%} of the time"
        lines.append(
            f"  this spec runs {spec.chains} chain(s); {most} needed by the measured spread ({most_upper} by its upper "
            f"bound): {verdict}"
        )
    return lines


def _measured_spreads(report: dict, gain: float) -> tuple[list[str], list[tuple[int, int]]]:
    """A line per comparison planned from (BAN-1 − Teacher and Teacher′ − Teacher, named as the report names
    its columns), and (chains by the measured sd, by its upper bound) for each comparison with a spread."""
    lines: list[str] = []
    needed: list[tuple[int, int]] = []
    for column in (generation_column(1), CONTROL_COLUMN):
        if column not in report["columns"]:
            lines.append(f"    {column} − {TEACHER_COLUMN}: that sweep has no {column} column")
            continue
        pairs = [(row[column], row[TEACHER_COLUMN]) for row in report["rows"].values()
                 if isinstance(row.get(column), float) and isinstance(row.get(TEACHER_COLUMN), float)]
        if len(pairs) < 2:
            lines.append(f"    {column} − {TEACHER_COLUMN}: {len(pairs)} chain(s) with both, too few for a spread")
            continue
        sd = stats.paired(*zip(*pairs)).std
        if sd == 0:
            lines.append(f"    {column} − {TEACHER_COLUMN}: the same in all {len(pairs)} chains, no spread to plan from")
            continue
        upper = stats.sd_upper_bound(sd, len(pairs))
        needed.append((stats.chains_needed(gain, sd), stats.chains_needed(gain, upper)))
        lines.append(
            f"    sd of {column} − {TEACHER_COLUMN} {sd:.2f} over {len(pairs)} chains → {needed[-1][0]} chains; at the sd's "
            f"{stats.POWER:.0%} upper bound {upper:.2f} (an sd from few chains is rough) → {needed[-1][1]}"
        )
    return lines, needed


def _ensemble_teacher_line(spec: SweepSpec) -> str:
    cost = ("generation k's cache is built by running k models" if spec.distill.teacher == "cached"
            else "generation k runs k teacher models per step (--calibrate times one)")
    return (f"  teacher of generation k ≥ 1 (distill.teacher_from: ensemble): the ensemble of generations 0 … k−1 "
            f"of its chain, logits log(mean softmax); {cost}")


def _label(spec: SweepSpec) -> str:
    objective = spec.distill.objective
    return objective if isinstance(objective, str) else "search " + "|".join(map(str, objective.choice))
