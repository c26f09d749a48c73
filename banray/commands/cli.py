"""The `banray` command line."""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

_exit_status: list[int] = []  # set by main() as the command exits


def _exit_without_teardown() -> None:
    """The last exit step of the `banray` command: Python's teardown of its modules after it, with torch,
    Ray and MLflow loaded, takes 1-1.5 s and does nothing a finished command needs. By now threads are
    joined and every other exit handler has run (those of the modules imported below included)."""
    if _exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[0])


# Before the imports below register theirs: exit handlers run last registered first.
atexit.register(_exit_without_teardown)

import click  # noqa: E402

from banray.environment import set_variables
from banray.records import arm_title  # noqa: E402
from banray.spec import (  # noqa: E402
    SpecError,
    SweepSpec,
    check_http_url,
    check_tracking_uri,
    load_spec,
    shorten,
    with_storage,
)

SPEC_ARGUMENT = click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))


def _load(spec_path: str) -> SweepSpec:
    """Load and validate SPEC, or print one line per problem and exit 2."""
    try:
        return load_spec(spec_path)
    except SpecError as exc:
        _fail(exc)


def _fail(exc: SpecError):
    for line in exc.lines:
        click.echo(f"error: {line}", err=True)
    sys.exit(2)


def _error(message: str, status: int = 2):
    click.echo(f"error: {' '.join(message.split())}", err=True)  # one line, whatever a backend said
    sys.exit(status)


@contextlib.contextmanager
def _looking(endpoint: str | None = None) -> Iterator[None]:
    """For the commands that read a sweep folder: a location that is not what it should be exits 2, storage or
    MLflow that fails exits 1, each with one line."""
    from banray.commands import inspection
    from banray.storage import use_endpoint

    use_endpoint(endpoint)
    try:
        with inspection.impatient_storage():
            yield
    except inspection.NotASweep as exc:
        _error(str(exc))
    except inspection.Unavailable as exc:
        _error(str(exc), 1)


def _checked(check: Callable[[str], str]) -> Callable:
    """A click callback that refuses an option's value as `check` (one of the spec's checks) does."""

    def callback(context: click.Context, parameter: click.Parameter, value: str | None) -> str | None:
        try:
            return value if value is None else check(value)
        except ValueError as exc:
            raise click.BadParameter(f"{shorten(value)} is not allowed: {exc}") from None

    return callback


ENDPOINT_OPTION = click.option(
    "--endpoint", metavar="URL", default=None, callback=_checked(check_http_url),
    help="S3-compatible endpoint for s3:// locations (MinIO, ...); default $AWS_ENDPOINT_URL_S3.",
)
CHECK_TRACKING_URI = _checked(check_tracking_uri)
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="banray")
def cli() -> None:
    """banray: Born-Again Network (self-distillation) sweeps on Ray.

    A sweep trains, for each of its chains, a generation-0 teacher on labels and then G student
    generations, each taught by the previous generation's best trial. Results go to
    <storage>/<name>/ (report.json, report.md, checkpoints) and to MLflow.
    """


@cli.command()
@click.argument("spec_paths", metavar="SPEC...", nargs=-1, required=True, type=click.Path(dir_okay=False))
def validate(spec_paths: tuple[str, ...]) -> None:
    """Check each SPEC (sweep YAML files) without running anything.

    Prints a one-line summary on stdout for each valid spec; for each invalid one, one line per problem on
    stderr, naming the file, the key path, the bad value and what is allowed. Every file is checked; exits
    with status 2 if any is invalid.
    """
    bad = False
    for spec_path in spec_paths:
        try:
            spec = load_spec(spec_path)
        except SpecError as exc:
            bad = True
            for line in exc.lines:
                click.echo(f"error: {line}", err=True)
            continue
        click.echo(
            f"{spec_path}: valid. Sweep '{spec.name}' on {spec.data.dataset}: {spec.chains} chain(s) × "
            f"(teacher + {spec.generations} generation(s){''.join(f' + {arm_title(arm)}' for arm in spec.side_arms())}) × "
            f"{spec.search.trials} trial(s) of "
            f"{spec.train.epochs} epoch(s); spec hash {spec.spec_hash()}"
        )
    if bad:
        sys.exit(2)


@cli.command()
@SPEC_ARGUMENT
@click.option(
    "--address",
    metavar="ADDR",
    default=None,
    help="Ray cluster to run on (e.g. 'auto' or 'ray://head:10001'); default: $RAY_ADDRESS, else a new local cluster.",
)
@click.option("--storage", metavar="PATH", default=None, help="Override the spec's `storage` folder.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an earlier sweep of the same name in the storage folder (only a banray sweep folder of yours).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted sweep from the state in its storage folder (same spec): finished "
    "generations are kept, an interrupted one continues from its trials' last checkpoints.",
)
@click.option(
    "--start-or-resume",
    is_flag=True,
    help="Resume the sweep if its folder holds one started with this spec, else start it: for job "
    "entrypoints that a scheduler may run again (a RayJob's retry).",
)
@click.option(
    "--ray-dashboard/--no-ray-dashboard",
    default=None,
    help="Whether the local Ray cluster the sweep starts (no --address) runs Ray's dashboard at "
    "127.0.0.1:8265; default: only when trials run on TorchTrainer, which needs it.",
)
def sweep(
    spec_path: str, address: str | None, storage: str | None, overwrite: bool, resume: bool, start_or_resume: bool,
    ray_dashboard: bool | None,
) -> None:
    """Run the sweep described by SPEC on Ray, then print and write its report.

    Each (chain, generation) runs as a Ray Tune run of `search.trials` trials. A one-worker trial
    without a GPU trains in one of the sweep's warm processes; one with a GPU in its Tune trial's
    process; one with several workers on a Ray Train TorchTrainer (`resources.trainer`). The report
    (report.json, report.md) and checkpoints go to <storage>/<name>/; MLflow runs go to
    `tracking.uri` ($MLFLOW_TRACKING_URI, else a SQLite store in that folder).
    """
    spec = _load(spec_path)  # before importing Ray and MLflow: a bad spec fails at once
    from banray.sweep import start as sweep_module

    if (resume or start_or_resume) and overwrite:
        _fail(SpecError("--resume and --overwrite: pick one (--overwrite deletes what --resume would continue)"))
    if resume and start_or_resume:
        _fail(SpecError("--resume and --start-or-resume: pick one (--start-or-resume resumes when it can)"))
    try:
        sweep_module.run(
            spec, address=address, storage=storage, overwrite=overwrite,
            resume="if-started" if start_or_resume else resume, echo=click.echo, dashboard=ray_dashboard,
        )
    except SpecError as exc:
        _fail(exc)


def _device(context: click.Context, parameter: click.Parameter, value: str | None):
    """--device as a torch device this machine has; default: cuda where there is one, else cpu."""
    import torch

    if value is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value)
    except RuntimeError:
        raise click.BadParameter(f"{shorten(value)} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter(f"{value}: this machine has no CUDA device")
    return device


@cli.command()
@SPEC_ARGUMENT
@click.option("--chain", "-c", type=click.IntRange(min=0), required=True, help="Chain of the trial (0 .. chains-1).")
@click.option("--generation", "-g", type=click.IntRange(min=0), required=True,
              help="Generation of the trial: 0 trains the teacher on the labels, K ≥ 1 a student of --teacher.")
@click.option("--teacher", "teachers", metavar="CHECKPOINT", multiple=True,
              help="Generation K-1's checkpoint folder (local or s3://), written by `banray trial` or a sweep; "
              "needed for K ≥ 1. With distill.teacher_from: ensemble, give it once for each of generations "
              "0 … K-1, in that order.")
@click.option("--trial", "trial_number", metavar="N", type=click.IntRange(min=0), default=0, show_default=True,
              help="Trial number (0 .. search.trials-1): the trial's seed is the one a sweep's trial N gets.")
@click.option("--device", metavar="DEVICE", default=None, callback=_device,
              help="torch device to train on (cpu, cuda, cuda:1, mps); default: cuda if there is one, else cpu.")
@click.option("--out", metavar="DIR", default=None,
              help="Folder for the checkpoints, kept as DIR/chain<C>-gen<K>/trial<N>/epoch-<E>; default "
              "./trials/<spec name>.")
def trial(spec_path: str, chain: int, generation: int, teachers: tuple[str, ...], trial_number: int, device,
          out: str | None) -> None:
    """Train one trial of SPEC here, without Ray or MLflow, and say where its best checkpoint is.

    The trial gets the settings and seed that trial N of (chain C, generation K) gets in a sweep of SPEC,
    except that every searched range takes its midpoint (the geometric mean for loguniform, the first value
    of a choice), not a sampled value. It prints one line per epoch (training loss, validation error,
    training samples per second) and keeps a checkpoint whenever the validation metric is at least as good
    as the best so far, at the last epoch, and every train.checkpoint_every_s seconds. A checkpoint is a
    teacher for generation K+1, here (--teacher) or in a sweep of the same spec; the teacher given here is
    checked by its record as a sweep checks it (with distill.teacher_from: ensemble, each of generations
    0 … K-1's, given as --teacher in that order). Exits 2, with one line naming the option, on bad input (a
    folder that holds this trial's checkpoints already included), before anything is written.
    """
    from banray.storage import SWEEP_FILES
    from banray.training import checkpoint, local

    spec = _load(spec_path)
    _check_trial_options(spec, chain, generation, teachers, trial_number)
    ensemble = teachers if spec.distill.teacher_from == "ensemble" else ()
    settings = local.trial_settings(spec, chain, generation, trial_number, teachers[-1] if teachers else None,
                                    ensemble)
    folder = local.trial_folder(Path(out or Path("trials") / spec.name).resolve(), settings)
    if folder.exists():
        _error(f"--out: {folder} holds checkpoints of this trial already; remove it or choose another --out")
    click.echo(f"banray: trial {trial_number} of chain {chain} generation {generation} of '{spec.name}' on "
               f"{device} (seed {settings.seed}); checkpoints in {folder}")
    try:
        summary = local.run_trial(settings, folder, device, spec.resources.cpus_per_worker, SWEEP_FILES,
                                  functools.partial(_echo_epoch, settings.train.epochs))
    except (checkpoint.TeacherMismatch, checkpoint.BadCheckpoint) as exc:
        _error(f"--teacher: {exc}")
    if not summary.finished:
        _error(summary.failure, 1)
    click.echo(f"Best: epoch {summary.best_epoch}, val_error {summary.val_error:.2%}; checkpoint {summary.checkpoint}")


def _check_trial_options(spec: SweepSpec, chain: int, generation: int, teachers: tuple[str, ...],
                         trial_number: int) -> None:
    """Exit 2 with one line naming the option that does not fit the spec."""
    if chain >= spec.chains:
        _error(f"--chain: {chain} is out of range: '{spec.name}' has chains 0..{spec.chains - 1}")
    if generation > spec.generations:
        _error(f"--generation: {generation} is out of range: '{spec.name}' has generations 0..{spec.generations}")
    if trial_number >= spec.search.trials:
        _error(f"--trial: {trial_number} is out of range: '{spec.name}' has trials 0..{spec.search.trials - 1}")
    if generation == 0 and teachers:
        _error("--teacher: generation 0 learns from the labels and takes no teacher")
    _check_teacher_count(spec, generation, len(teachers))
    if generation > 0 and not teachers:
        _error(f"--teacher: generation {generation} needs the checkpoint of generation {generation - 1} "
               "(a folder written by `banray trial` or a sweep)")


def _check_teacher_count(spec: SweepSpec, generation: int, given: int) -> None:
    """Exit 2 unless --teacher is given once per model generation `generation` learns from."""
    if spec.distill.teacher_from == "ensemble" and generation > 0 and given != generation:
        _error(f"--teacher: given {given} time(s), but with distill.teacher_from 'ensemble' generation {generation} "
               f"learns from generations 0..{generation - 1}: give --teacher once for each, in generation order")
    if spec.distill.teacher_from == "previous" and given > 1:
        _error(f"--teacher: given {given} times, but generation {generation} learns from generation "
               f"{generation - 1} alone (distill.teacher_from 'previous'): give it once")


def _echo_epoch(epochs: int, row: dict) -> None:
    kept = "; checkpoint kept" if row["checkpoint"] else ""
    click.echo(f"epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.4f}, val_error {row['val_error']:.2%}, "
               f"{row['samples_per_s']:,.0f} samples/s ({row['seconds']:.1f} s){kept}")


@cli.command()
@SPEC_ARGUMENT
@click.option("--storage", metavar="PATH", default=None, help="Override the spec's `storage` folder.")
@click.option(
    "--calibrate",
    metavar="N",
    type=click.IntRange(min=0),
    default=0,
    help="Time N training steps of the student model on random data here, to estimate worker-hours.",
)
@click.option(
    "--detect",
    metavar="GAIN",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Also say how many chains detect a mean gain of GAIN over the teacher (points of test error; "
    "perplexity for language models) with 80% power.",
)
@click.option(
    "--from-report",
    metavar="PATH_OR_URI",
    default=None,
    help="A finished sweep's report.json, or its folder (local or s3://), whose spread of paired differences "
    "--detect plans from.",
)
@click.option(
    "--address",
    metavar="ADDR",
    default=None,
    help="Also connect to this Ray cluster (e.g. 'auto' or 'head:6379') and check that one trial's CPUs and "
    "GPUs fit it.",
)
def plan(spec_path: str, storage: str | None, calibrate: int, detect: float | None, from_report: str | None,
         address: str | None) -> None:
    """Show what SPEC would run, and check it can run, without training anything.

    Prints the DAG (chains × generations × trials), what each generation searches, the worker slots
    needed and the amount of work; checks that the dataset's files are under data.root in the form its
    loader reads (with data.download, that root is writable; a download URL that does not answer from
    here is only a warning), that the storage folder is
    writable (a marker is written, read back and removed), that the tracking URI answers (a local store
    is only looked at: a missing one is not created, plan says where the sweep would create it) and,
    with --address, that the cluster has the CPUs and GPUs of one trial. Exits 1, with one line on
    stderr, if a check fails; 2 if the spec or an option is invalid (an unreadable --from-report
    included).
    """
    from banray.commands import plan as plan_module

    spec = _load(spec_path)
    if storage is not None:
        try:
            spec = with_storage(spec, storage)
        except SpecError as exc:
            _fail(exc)
    if from_report is not None and detect is None:
        _fail(SpecError("--from-report needs --detect GAIN"))
    try:
        lines = plan_module.describe(spec, calibrate)
        if detect is not None:
            lines += plan_module.chains_for_gain(spec, detect, from_report)
    except SpecError as exc:  # --calibrate: a model that cannot be built or take the input
        _fail(exc)
    except plan_module.PlanCheckFailed as exc:  # --from-report cannot be read: bad input, not a failed check
        _fail(SpecError(" ".join(str(exc).split())))
    for line in lines:
        click.echo(line)
    try:
        click.echo(f"Data: {plan_module.check_data(spec)}")
        click.echo(f"Storage: {plan_module.check_storage(spec)}")
        click.echo(f"Tracking: {plan_module.check_tracking(spec)}")
        if address is not None:
            click.echo(f"Cluster: {plan_module.check_cluster(spec, address)}")
    except plan_module.PlanCheckFailed as exc:
        _error(str(exc), 1)


@cli.command()
@click.argument("sweep_name", metavar="SWEEP")
@click.option("--generation", "-g", type=click.IntRange(min=0), required=True, help="Generation to mark as best.")
@click.option("--chain", "-c", type=click.IntRange(min=0), default=None,
              help="Chain of that generation; default: the chain that alias gen-<K> points at.")
@click.option("--tracking-uri", metavar="URI", default=None, callback=CHECK_TRACKING_URI,
              help="MLflow tracking URI; default $MLFLOW_TRACKING_URI.")
@click.option(
    "--sweep-dir", metavar="PATH", default=None,
    help="The sweep's folder (local or s3://): promote in the store it tracked to, its own SQLite store for a "
    "local sweep. Default, without --tracking-uri and $MLFLOW_TRACKING_URI: ./runs/SWEEP.",
)
@ENDPOINT_OPTION
def promote(sweep_name: str, generation: int, chain: int | None, tracking_uri: str | None, sweep_dir: str | None,
            endpoint: str | None) -> None:
    """Move the registered model SWEEP's alias @best to generation K by hand.

    The chosen model version gets the tags banray.promoted_by (your user name) and banray.promoted_at.
    The MLflow store is --tracking-uri, else the one the sweep folder --sweep-dir records (or holds),
    else $MLFLOW_TRACKING_URI, else that of ./runs/SWEEP (the spec's default storage). Nothing is created
    at a URI that holds no MLflow store. Exits 2, with one line on stderr, if the URI holds no store or
    does not answer, the folder is no sweep's, or SWEEP has no such generation; 1 if the tracking server
    fails otherwise. `banray report <sweep folder>` then renders the report with the new @best.
    """
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    from banray.commands import inspection

    from banray.results import tracking

    def why(exc: Exception) -> str:
        return exc.message if isinstance(exc, MlflowException) else f"{type(exc).__name__}: {exc}"

    uri = _promote_store(sweep_name, tracking_uri, sweep_dir, endpoint)
    problem = inspection.store_problem(uri)  # in seconds, not MLflow's 4 minutes of retries; creating nothing
    if problem:
        _error(f"--tracking-uri: {problem}")
    track = tracking.Tracking(uri, sweep_name, None)
    alias = f"gen-{generation}" if chain is None else f"chain{chain}-gen-{generation}"
    failures = (MlflowException, requests.RequestException, sqlalchemy.exc.SQLAlchemyError, OSError)
    with tracking.impatient_http():
        try:
            version = track.client().get_model_version_by_alias(sweep_name, alias)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                _error(f"--tracking-uri: {uri} failed: {why(exc)}", 1)
            _error(f"registered model '{sweep_name}' has no alias @{alias} at {uri}: {exc.message}")
        except failures as exc:
            _error(f"--tracking-uri: {uri} failed: {why(exc)}", 1)
        try:
            tracking.promote(track, sweep_name, version.version)
        except failures as exc:
            _error(f"moving {sweep_name}@best to version {version.version} at {uri} failed: {why(exc)}", 1)
    click.echo(f"{sweep_name}@best → version {version.version} (@{alias})")


def _promote_store(sweep_name: str, tracking_uri: str | None, sweep_dir: str | None, endpoint: str | None) -> str:
    """The MLflow store `promote` works on (see its help)."""
    from banray.commands import inspection

    if tracking_uri and sweep_dir:
        _error("--tracking-uri and --sweep-dir: pick one (--sweep-dir finds the tracking URI the sweep used)")
    if tracking_uri:
        return tracking_uri
    if sweep_dir is None and os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if sweep_dir is None:
        sweep_dir = str(Path("runs") / sweep_name)
        if not Path(sweep_dir).is_dir():
            _error(f"--tracking-uri: no tracking URI given, MLFLOW_TRACKING_URI is not set and there is no sweep "
                   f"folder {Path(sweep_dir).absolute()}; pass --sweep-dir or --tracking-uri")
    with _looking(endpoint):
        sweep = inspection.open_sweep(sweep_dir)
        uri = inspection.tracking_uri(sweep) or os.environ.get("MLFLOW_TRACKING_URI")
    if sweep.spec.name != sweep_name:
        _error(f"--sweep-dir: {sweep.storage.uri} holds sweep '{sweep.spec.name}', not '{sweep_name}'")
    if not uri:
        _error(f"--sweep-dir: {sweep.storage.uri} records no tracking URI (it tracked through $MLFLOW_TRACKING_URI "
               "and has not finished); pass --tracking-uri")
    return uri


@cli.command()
@click.argument("location", metavar="SWEEP_OR_STORAGE")
@JSON_OPTION
@ENDPOINT_OPTION
def status(location: str, as_json: bool, endpoint: str | None) -> None:
    """Show how far a sweep is, from any machine that reaches its storage (no Ray needed).

    SWEEP_OR_STORAGE is a sweep folder (a local path or s3://bucket/prefix/name): per chain, the
    generations done with their validation and test error, the group running and since when, the best
    generation so far (lowest validation metric, never chosen on test), whether it finished, and an ETA
    from the finished groups' mean duration (unknown until one has finished). Given a storage root
    instead, lists the sweeps under it, one line each (as `banray ls`). Reads spec.yaml, state.json and
    report.json only. Exits 2, with one line on stderr, if the location is missing, not a sweep folder or
    storage root, or its files are unreadable; 1 if the storage fails.
    """
    from banray.commands import inspection

    with _looking(endpoint):
        storage = inspection.as_sweep(location)
        if storage is None:
            rows = [inspection.summary(found) for found in inspection.sweeps_under(location)]
            if not rows:
                raise inspection.NotASweep(f"{location}: not a sweep folder, and no sweep folder is in it")
        else:
            found = inspection.status(inspection.read_sweep(storage))
    if storage is None:
        lines = [json.dumps(rows, indent=2)] if as_json else inspection.listing_lines(rows)
    else:
        lines = [json.dumps(found, indent=2)] if as_json else inspection.status_lines(found)
    for line in lines:
        click.echo(line)


@cli.command(name="ls")
@click.argument("location", metavar="STORAGE")
@JSON_OPTION
@ENDPOINT_OPTION
def list_sweeps(location: str, as_json: bool, endpoint: str | None) -> None:
    """List the sweeps under STORAGE, a storage root (a local folder or s3://bucket/prefix).

    One line per sweep: its name, status (finished, running: its driver holds the folder's lock, or
    interrupted), chains, generations done of those planned, and when it started. Exits 2, with one line
    on stderr, if STORAGE is missing or is a sweep folder itself; 1 if the storage fails.
    """
    from banray.commands import inspection

    with _looking(endpoint):
        if inspection.as_sweep(location) is not None:
            raise inspection.NotASweep(f"{location}: a sweep folder, not a storage root (`banray status {location}` shows it)")
        rows = [inspection.summary(found) for found in inspection.sweeps_under(location)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        click.echo(f"No sweeps in {location}")
    else:
        for line in inspection.listing_lines(rows):
            click.echo(line)


@cli.command()
@click.argument("location", metavar="SWEEP")
@ENDPOINT_OPTION
def report(location: str, endpoint: str | None) -> None:
    """Render a finished sweep's report.json, report.md and report.png again, into its folder.

    SWEEP is the sweep folder (local or s3://) of a sweep whose state.json says it finished. The report is
    rebuilt from its report.json, with the registered model's aliases as MLflow holds them now (e.g. after
    `banray promote`), by the report code of this banray version. Each file
    is replaced whole, and only once all three are rendered. Exits 2, with one line on stderr, if SWEEP
    is no finished sweep's folder or its report is unreadable; 1 if storage or MLflow fails.
    """
    from banray.commands import inspection

    with _looking(endpoint):
        files = inspection.rerender(inspection.open_sweep(location))
    click.echo(f"Report: {', '.join(files)}")


@cli.command()
@click.argument("location", metavar="SWEEP")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True,
              help="Port on 127.0.0.1 for the MLflow UI.")
@click.option("--tracking-uri", metavar="URI", default=None, callback=CHECK_TRACKING_URI,
              help="The sweep's MLflow store, if its folder does not record it (it ran with $MLFLOW_TRACKING_URI).")
@ENDPOINT_OPTION
def ui(location: str, port: int, tracking_uri: str | None, endpoint: str | None) -> None:
    """Open the MLflow UI on SWEEP's runs; blocks until Ctrl-C.

    SWEEP is the sweep folder (local or s3://). Starts `mlflow server` on the sweep's store (the SQLite
    store in its folder, or the tracking URI its report or spec records), bound to 127.0.0.1:PORT, and
    prints the link to the experiment's training runs. Ctrl-C (or SIGTERM) stops the server. A sweep
    tracked on a tracking server needs no new one: its link is printed at once. Exits 2, with one line on
    stderr, if SWEEP is no sweep folder, its store is missing or the port is taken; 1 if the server fails.
    """
    from banray.commands import inspection
    from banray.results import tracking

    with _looking(endpoint):
        sweep = inspection.open_sweep(location)
        uri = tracking_uri or inspection.tracking_uri(sweep) or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise inspection.NotASweep(f"{sweep.storage.uri} records no tracking URI (it tracked through "
                                    "$MLFLOW_TRACKING_URI and has not finished); pass --tracking-uri")
        problem = inspection.store_problem(uri)
        if problem:
            raise inspection.NotASweep(f"tracking URI: {problem}")
        mlflow_info = (sweep.report or {}).get("mlflow") or {}
        known = mlflow_info.get("experiment_id") if mlflow_info.get("tracking_uri") == uri else None
        name = inspection.experiment_name(sweep)
        if uri.startswith(("http://", "https://")):
            click.echo(f"The sweep tracks to the MLflow server at {uri}; its training runs:")
            click.echo(tracking.runs_link(uri, known or inspection.experiment_id(uri, name)))
            return
        if inspection.port_taken(port):
            raise inspection.NotASweep(f"--port: 127.0.0.1:{port} is in use; pass another --port")
        inspection.serve(uri, name, known, port, click.echo)


# Lines Ray's workers print that say nothing to a banray user: Train V2's preemption watcher, restartable
# by design, is reported once per trial; banray starts its evaluations' runner, hosts and trials as actors, by design.
RAY_NOISE = (r"class name: 'PreemptionWatcher' .* has constructor arguments in the object store"
             r"|PYTHON worker processes have been started on node")


def _plain_output() -> None:
    """What Ray forwards from its workers, without its routine notices and, off a terminal, without colour
    codes (Ray colours its prefixes and its "[repeated Nx]" notes wherever the output goes)."""
    import colorama

    set_variables({"RAY_DEDUP_LOGS_SKIP_REGEX": RAY_NOISE}, keep_existing=True)  # read when Ray is imported, after this
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not stream.isatty():
            setattr(sys, name, colorama.AnsiToWin32(stream, strip=True, convert=False).stream)


def main() -> None:
    """The `banray` command: click's usage errors, like banray's own, are one line on stderr."""
    _plain_output()
    try:
        _run_command()
    except SystemExit as exc:
        code = exc.code
        _exit_status.append(code if isinstance(code, int) else 0 if code is None else 1)  # as Python's own exit
        raise


def _run_command() -> None:
    try:
        status = cli.main(prog_name="banray", standalone_mode=False)
    except click.ClickException as exc:
        context = getattr(exc, "ctx", None)
        hint = f" (see {context.command_path} --help)" if context is not None else ""
        click.echo(f"error: {' '.join(exc.format_message().split())}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(1)
    sys.exit(status if isinstance(status, int) else 0)
