"""The `banray` command line."""

from __future__ import annotations

import sys

import click

from banray.spec import SpecError, SweepSpec, load_spec

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
@click.option("--overwrite", is_flag=True, help="Replace an earlier sweep of the same name in the storage folder.")
def sweep(spec_path: str, address: str | None, storage: str | None, overwrite: bool) -> None:
    """Run the sweep described by SPEC on Ray, then print and write its report.

    Each (chain, generation) runs as a Ray Tune run of `search.trials` trials, each trial a Ray
    Train TorchTrainer. The report (report.json, report.md) and checkpoints go to
    <storage>/<name>/; MLflow runs go to `tracking.uri` ($MLFLOW_TRACKING_URI, else a SQLite store
    in that folder).
    """
    from banray import sweep as sweep_module

    spec = _load(spec_path)
    try:
        sweep_module.run(spec, address=address, storage=storage, overwrite=overwrite, echo=click.echo)
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
def plan(spec_path: str, storage: str | None, calibrate: int) -> None:
    """Show what SPEC would run, and check it can run, without training anything.

    Prints the DAG (chains × generations × trials), what each generation searches, the worker slots
    needed and the amount of work; checks that the storage folder is writable (a marker is written,
    read back and removed) and that the tracking URI answers. Exits 1 if a check fails, 2 if the spec
    is invalid.
    """
    from banray import plan as plan_module

    spec = _load(spec_path)
    if storage is not None:
        spec = spec.model_copy(update={"storage": storage})
    for line in plan_module.describe(spec, calibrate):
        click.echo(line)
    try:
        click.echo(f"Storage: {plan_module.check_storage(spec)}")
        click.echo(f"Tracking: {plan_module.check_tracking(spec)}")
    except plan_module.PlanCheckFailed as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def main() -> None:
    cli()
