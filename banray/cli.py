"""The `banray` command line."""

from __future__ import annotations

import sys

import click

from banray.spec import SpecError, SweepSpec, load_spec, with_storage

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="banray")
def cli() -> None:
    """banray: Born-Again Network (self-distillation) sweeps on Ray.

    A sweep trains, for each of its chains, a generation-0 teacher on labels and then G student
    generations, each taught by the previous generation's best trial. Results go to
    <storage>/<name>/ (report.json, report.md, checkpoints) and to MLflow.
    """


@cli.command()
@SPEC_ARGUMENT
def validate(spec_path: str) -> None:
    """Check SPEC (a sweep YAML file) without running anything.

    Prints a summary if the spec is valid; otherwise one line per problem, naming the key path,
    the bad value and what is allowed, and exits with status 2.
    """
    spec = _load(spec_path)
    click.echo(
        f"{spec_path}: valid. Sweep '{spec.name}' on {spec.data.dataset}: {spec.chains} chain(s) × "
        f"(teacher + {spec.generations} generation(s)) × {spec.search.trials} trial(s) of "
        f"{spec.train.epochs} epoch(s); spec hash {spec.spec_hash()}"
    )


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
def sweep(
    spec_path: str, address: str | None, storage: str | None, overwrite: bool, resume: bool, start_or_resume: bool
) -> None:
    """Run the sweep described by SPEC on Ray, then print and write its report.

    Each (chain, generation) runs as a Ray Tune run of `search.trials` trials, each trial a Ray
    Train TorchTrainer. The report (report.json, report.md) and checkpoints go to
    <storage>/<name>/; MLflow runs go to `tracking.uri` ($MLFLOW_TRACKING_URI, else a SQLite store
    in that folder).
    """
    spec = _load(spec_path)  # before importing Ray and MLflow: a bad spec fails at once
    from banray import sweep as sweep_module

    if (resume or start_or_resume) and overwrite:
        _fail(SpecError("--resume and --overwrite: pick one (--overwrite deletes what --resume would continue)"))
    if resume and start_or_resume:
        _fail(SpecError("--resume and --start-or-resume: pick one (--start-or-resume resumes when it can)"))
    try:
        sweep_module.run(
            spec, address=address, storage=storage, overwrite=overwrite,
            resume="if-started" if start_or_resume else resume, echo=click.echo,
        )
    except SpecError as exc:
        _fail(exc)


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
def plan(spec_path: str, storage: str | None, calibrate: int, detect: float | None, from_report: str | None) -> None:
    """Show what SPEC would run, and check it can run, without training anything.

    Prints the DAG (chains × generations × trials), what each generation searches, the worker slots
    needed and the amount of work; checks that the storage folder is writable (a marker is written,
    read back and removed) and that the tracking URI answers (a local store is only looked at: a
    missing one is not created, plan says where the sweep would create it). Exits 1, with one line
    on stderr, if a check fails; 2 if the spec or an option is invalid (an unreadable --from-report
    included).
    """
    from banray import plan as plan_module

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
        click.echo(f"Storage: {plan_module.check_storage(spec)}")
        click.echo(f"Tracking: {plan_module.check_tracking(spec)}")
    except plan_module.PlanCheckFailed as exc:
        click.echo(f"error: {' '.join(str(exc).split())}", err=True)  # one line, whatever the backend said
        sys.exit(1)


@cli.command()
@click.argument("sweep_name", metavar="SWEEP")
@click.option("--generation", "-g", type=click.IntRange(min=0), required=True, help="Generation to mark as best.")
@click.option("--chain", "-c", type=click.IntRange(min=0), default=None,
              help="Chain of that generation; default: the chain that alias gen-<K> points at.")
@click.option("--tracking-uri", metavar="URI", default=None, help="MLflow tracking URI; default $MLFLOW_TRACKING_URI.")
def promote(sweep_name: str, generation: int, chain: int | None, tracking_uri: str | None) -> None:
    """Move the registered model SWEEP's alias @best to generation K by hand.

    The chosen model version gets the tags banray.promoted_by (your user name) and banray.promoted_at.
    For a sweep tracked in its folder's local store, pass --tracking-uri sqlite:///<storage>/<name>/mlflow.db.
    Nothing is created at a URI that holds no MLflow store. Exits 2, with one line on stderr, if the
    URI holds no store or does not answer, or SWEEP has no such generation; 1 if the tracking server
    fails otherwise.
    """
    import os

    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    from banray import tracking

    def fail(message: str, status: int = 2):
        click.echo(f"error: {' '.join(message.split())}", err=True)  # one line, whatever the server said
        sys.exit(status)

    def why(exc: Exception) -> str:
        return exc.message if isinstance(exc, MlflowException) else f"{type(exc).__name__}: {exc}"

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        fail("--tracking-uri: no tracking URI given and MLFLOW_TRACKING_URI is not set")
    if uri.startswith(("http://", "https://")):
        problem = tracking.server_problem(uri)  # seconds, not MLflow's 4 minutes of retries
        if problem:
            fail(f"--tracking-uri: {problem}")
    else:
        store = tracking.local_store(uri)  # MLflow's client would create a missing local store
        if store is not None and not store.exists:
            at = f"{store.path} ({uri})" if store.path else uri
            fail(f"--tracking-uri: no MLflow store at {at}" + (f": {store.problem}" if store.problem else ""))
        if store is not None and store.problem:
            fail(f"--tracking-uri: {uri}: {store.problem}")
    track = tracking.Tracking(uri, sweep_name, None)
    alias = f"gen-{generation}" if chain is None else f"chain{chain}-gen-{generation}"
    failures = (MlflowException, requests.RequestException, sqlalchemy.exc.SQLAlchemyError, OSError)
    with tracking.impatient_http():
        try:
            version = track.client().get_model_version_by_alias(sweep_name, alias)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                fail(f"--tracking-uri: {uri} failed: {why(exc)}", 1)
            fail(f"registered model '{sweep_name}' has no alias @{alias} at {uri}: {exc.message}")
        except failures as exc:
            fail(f"--tracking-uri: {uri} failed: {why(exc)}", 1)
        try:
            tracking.promote(track, sweep_name, version.version)
        except failures as exc:
            fail(f"moving {sweep_name}@best to version {version.version} at {uri} failed: {why(exc)}", 1)
    click.echo(f"{sweep_name}@best → version {version.version} (@{alias})")


def main() -> None:
    """The `banray` command: click's usage errors, like banray's own, are one line on stderr."""
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
