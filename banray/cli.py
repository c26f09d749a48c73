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


def main() -> None:
    cli()
