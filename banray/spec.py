"""The sweep spec: one YAML file, validated by pydantic before anything starts.

The spec is the single description of a sweep. `load_spec` either returns a valid `SweepSpec` or
raises `SpecError` whose lines each name the key path, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from banray.catalog.data import DATASETS, dataset_kind
from banray.catalog.losses import OBJECTIVES, LossParams
from banray.catalog.models import MODELS, argument_problem, model_defaults
from banray.catalog.models.registry import model_task
from banray.catalog.scores import ensemble_members
from banray.columns import comparison_name, comparisons, report_columns
from banray.records import BUDGET_ARM, MAIN_ARM, SMOOTHING_ARM, control_arm, is_control


class SpecError(Exception):
    """An invalid spec; `lines` holds one self-contained message per problem."""

    def __init__(self, lines: list[str] | str):
        self.lines = [lines] if isinstance(lines, str) else lines
        super().__init__("\n".join(self.lines))


class _Section(BaseModel):
    # No infinities or NaN anywhere: an infinite lr, temperature or bound is always a mistake.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _not_a_boolean(value: Any) -> Any:
    # pydantic reads `true` as 1 for numbers; in a spec that is a slip, never a count.
    if isinstance(value, bool):
        raise ValueError("give a number, not true or false")
    return value


Int = Annotated[int, BeforeValidator(_not_a_boolean)]
Float = Annotated[float, BeforeValidator(_not_a_boolean)]
SEED_MAX = 2**32 - 1  # what numpy's and scikit-learn's random states accept
# Upper bounds where a larger value can only be a typo (an extra digit or two), not an experiment: the paper
# trains 200-300 epochs, 3-7 generations, a handful of chains. A sweep beyond them is refused at once
# instead of reserving a cluster for centuries.
MAX_EPOCHS = 10_000
MAX_GENERATIONS = 100
MAX_CHAINS = 1_000
MAX_TRIALS = 10_000
MAX_BATCH_SIZE = 1 << 20
MAX_BPTT = 10_000
MAX_WORKERS = 4_096
MAX_CPUS_PER_WORKER = 1_024
MAX_GPUS_PER_WORKER = 64
MAX_FAILURES = 1_000
MAX_CONTROL_TEACHERS = 100
# Ray counts resources in units of 0.0001 (ray_constants.MIN_RESOURCE_GRANULARITY), that is 4 decimals.
RESOURCE_DECIMALS = 4
RESOURCE_UNIT = 10**-RESOURCE_DECIMALS


def _known(registry, name: str) -> str:
    if name not in registry:
        raise ValueError(f"unknown {registry.kind} '{name}'; allowed: {', '.join(registry.names())}")
    return name


class Range(_Section):
    """A search range instead of a value: exactly one of `uniform: [low, high]`, `loguniform: [low, high]`,
    `integer: [low, high]` (bounds included) or `choice: [a, b, ...]`. Optuna samples it per trial."""

    uniform: tuple[Float, Float] | None = None
    loguniform: tuple[Float, Float] | None = None
    integer: tuple[Int, Int] | None = None
    choice: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> Range:
        given = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a search range needs exactly one of uniform, loguniform, integer, choice; got {given}")
        bounds = self.uniform or self.loguniform or self.integer
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"a search range needs low < high; got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform needs low > 0; got {list(self.loguniform)}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)

    def values(self) -> list[Any]:
        """The values that must each be valid for the field: the bounds, or every choice."""
        return list(getattr(self, self.kind))

    def midpoint(self) -> Any:
        """A representative value: the middle of the range (geometric for loguniform), or the first choice."""
        if self.choice is not None:
            return self.choice[0]
        low, high = self.values()
        if self.loguniform is not None:
            return (low * high) ** 0.5
        return (low + high) // 2 if self.integer is not None else (low + high) / 2


def _searchable(scalar):
    """A field that takes either a value of type `scalar` or a search Range (a mapping)."""
    return Annotated[
        Union[Annotated[scalar, Tag("value")], Annotated[Range, Tag("range")]],
        Discriminator(lambda v: "range" if isinstance(v, (dict, Range)) else "value"),
    ]


class _SearchableSection(_Section):
    """A section whose fields may hold search ranges; every range's values must be valid for its field."""

    @model_validator(mode="after")
    def _range_values_fit(self):
        for name, value in self.ranges().items():
            self._check_values(name, value)
            if value.kind in ("uniform", "loguniform") and _takes_whole_numbers(type(self), name):
                low, high = value.values()
                raise ValueError(
                    f"{name}: a {value.kind} range is not allowed: {name} takes whole numbers; "
                    f"use integer: [{int(low)}, {int(high)}] or choice: [...]"
                )
        return self

    def _check_values(self, name: str, value: Range) -> None:
        """Every value the range can give (its bounds, or each choice) must be valid for the field."""
        for candidate in value.values():
            try:
                type(self).model_validate({**self.model_dump(), name: candidate})
            except ValidationError as exc:
                msg = exc.errors()[0]["msg"].removeprefix("Value error, ")
                raise ValueError(
                    f"{name}: the range's value {shorten(candidate)} is not allowed: {msg[:1].lower() + msg[1:]}"
                ) from None

    def ranges(self) -> dict[str, Range]:
        return {name: value for name, value in self if isinstance(value, Range)}

    def at_midpoints(self):
        """This section with every range replaced by its midpoint: a representative concrete value, for
        checks made before any trial samples one."""
        return self.model_copy(update={name: value.midpoint() for name, value in self.ranges().items()})


def _takes_whole_numbers(section: type[BaseModel], name: str) -> bool:
    """Whether a searchable field's value branch is an integer (its annotation is a Union of Annotated types)."""
    branches = typing.get_args(section.model_fields[name].annotation)
    return int in [typing.get_args(b)[0] if typing.get_origin(b) is Annotated else b for b in branches]


class DataSpec(_Section):
    dataset: str = Field(description="dataset name from the registry (digits, synthetic, cifar10, cifar100, ptb)")
    root: str = Field("~/.cache/banray/data", description="folder with the dataset files (file-based datasets)")
    download: bool = Field(False, description="download missing CIFAR files into root (needs internet access)")
    shared_split: bool = Field(
        False,
        description="every chain trains on one train/validation split and augmentation stream, drawn from `seed`; "
        "by default each chain draws its own from (seed, chain), and its control arm shares its chain's",
    )
    val_fraction: Float = Field(
        0.2, gt=0, lt=1, description="share of the training pool held out for selection (ptb has its own valid file)"
    )
    seed: Int = Field(
        0, ge=0, le=SEED_MAX, description="seed of the train/validation split and of each (epoch, sample)'s augmentation"
    )
    @field_validator("dataset")
    @classmethod
    def _dataset_known(cls, name: str) -> str:
        return _known(DATASETS, name)


def _kind_of(value: Any) -> str | None:
    """What a model argument's default says it takes; None where the builder does not say (no default, None)."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "whole number"
    if isinstance(value, float):
        return "number"
    return "string" if isinstance(value, str) else None


def _check_model_argument(arch: str, name: str, value: Any, default: Any) -> None:
    """A model argument must be of the kind its default is (a whole number may stand for a number)."""
    expected, given = _kind_of(default), _kind_of(value)
    if expected is not None and given != expected and (expected, given) != ("number", "whole number"):
        raise ValueError(
            f"{name}: {shorten(value, 40)} is not allowed for arch '{arch}': give a {expected} (default {default!r})"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}: {value!r} is not allowed for arch '{arch}': give a finite number")
    problem = argument_problem(arch, name, value)  # the range the builder declares
    if problem:
        reason = problem[:1].lower() + problem[1:]
        raise ValueError(f"{name}: {shorten(value, 40)} is not allowed for arch '{arch}': {reason}")


class ModelSpec(_Section):
    arch: str = Field(description="model name from the registry (cnn, mlp, densenet_bc, wrn, preact_resnet, lstm_lm)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the model builder")

    @field_validator("arch")
    @classmethod
    def _arch_known(cls, name: str) -> str:
        return _known(MODELS, name)

    @field_validator("kwargs")
    @classmethod
    def _kwargs_known(cls, kwargs: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        arch = info.data.get("arch")
        if arch is None:  # arch itself failed; that error is reported already
            return kwargs
        defaults = model_defaults(arch)
        unknown = sorted(set(kwargs) - set(defaults))
        if unknown:
            raise ValueError(
                f"unknown argument {', '.join(map(repr, unknown))} for arch '{arch}'; allowed: {', '.join(defaults)}"
            )
        for name, value in kwargs.items():
            _check_model_argument(arch, name, value, defaults[name])
        return kwargs


class TrainSpec(_SearchableSection):
    epochs: Int = Field(ge=1, le=MAX_EPOCHS, description="epochs per generation (every generation uses the same schedule)")
    batch_size: _searchable(Annotated[Int, Field(ge=1, le=MAX_BATCH_SIZE)]) = Field(
        64, description="global batch size, split across the workers of a trial"
    )
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: _searchable(Annotated[Float, Field(gt=0)]) = 0.05
    momentum: _searchable(Annotated[Float, Field(ge=0, lt=1)]) = Field(0.9, description="SGD momentum")
    nesterov: bool = False
    weight_decay: _searchable(Annotated[Float, Field(ge=0)]) = 5e-4
    lr_schedule: Literal["constant", "cosine", "step", "plateau"] = "cosine"
    lr_milestones: list[Int] = Field(default_factory=list, description="epochs at which 'step' multiplies lr by lr_gamma")
    lr_gamma: _searchable(Annotated[Float, Field(gt=0, le=1)]) = Field(
        0.1, description="'step' and 'plateau': the factor applied to lr"
    )
    lr_plateau_threshold: _searchable(Annotated[Float, Field(ge=0)]) = Field(
        0.0, description="'plateau': lr drops unless the validation metric improves by more than this"
    )
    grad_clip: _searchable(Annotated[Float, Field(gt=0)]) | None = Field(
        None, description="clip the gradient norm to this (language models)"
    )
    bptt: Int = Field(35, ge=1, le=MAX_BPTT, description="language models: time steps per truncated-BPTT chunk")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="bf16 autocast of the student's forward pass; 'auto': bf16 on CUDA, fp32 elsewhere"
    )
    channels_last: Literal["auto", "on", "off"] = Field(
        "auto", description="channels-last memory format for image models; 'auto': on with CUDA"
    )
    compile: bool = Field(False, description="torch.compile the student (pays off on GPUs for long runs)")
    checkpoint_every_s: Float = Field(
        60.0, ge=0, le=10**6,
        description="checkpoint an epoch whose validation metric is no better than the best so far only if this "
        "many seconds passed since the last checkpoint (the best epoch is always checkpointed; 0: every epoch)",
    )

    @model_validator(mode="after")
    def _milestones_fit(self) -> TrainSpec:
        if self.lr_schedule == "step" and not self.lr_milestones:
            raise ValueError("lr_schedule 'step' needs lr_milestones, e.g. [60, 120, 160]")
        bad = [m for m in self.lr_milestones if not 0 < m < self.epochs]
        if bad:
            raise ValueError(f"lr_milestones {bad} lie outside 1..{self.epochs - 1} (epochs is {self.epochs})")
        # MultiStepLR would silently apply a repeated milestone twice; out of order is almost surely a typo.
        if any(a >= b for a, b in zip(self.lr_milestones, self.lr_milestones[1:])):
            raise ValueError(f"lr_milestones {self.lr_milestones} must be strictly increasing, e.g. [60, 120, 160]")
        return self


class DistillSpec(_SearchableSection):
    objective: _searchable(str) = Field("ban", description="objective of generations ≥ 1 (generation 0 always uses 'ce')")
    alpha: _searchable(Annotated[Float, Field(ge=0, le=1)]) = Field(
        0.5, description="kd: weight of the teacher term; the label term gets 1 − alpha"
    )
    temperature: _searchable(Annotated[Float, Field(gt=0)]) = Field(
        1.0, description="softmax temperature of the teacher term (paper: 1)"
    )
    teacher_weight: _searchable(Annotated[Float, Field(ge=0)]) = Field(1.0, description="ban+l: weight of the teacher term")
    label_smoothing: Annotated[Float, Field(ge=0, lt=1)] = Field(
        0.0, description="label smoothing ε of the label term of any objective that has one (objective 'ls': labels "
        "only, with ε > 0)"
    )
    label_weight: _searchable(Annotated[Float, Field(ge=0)]) = Field(1.0, description="ban+l: weight of the label term")
    teacher: Literal["online", "cached"] = Field(
        "online", description="'cached': the teacher's logits are computed once per generation and shared by its trials"
    )
    teacher_from: Literal["previous", "ensemble"] = Field(
        "previous",
        description="what generation k ≥ 1 learns from: 'previous', generation k − 1; 'ensemble', generations "
        "0 … k − 1 of its chain, whose teacher logits are log(mean_i softmax(z_i)) (log-probabilities are valid "
        "logits: at temperature 1 the target is exactly their averaged softmax, at T the softmax of these over T)",
    )
    cache_dtype: Literal["float16", "float32"] = Field(
        "float16", description="'cached': how the teacher's raw logits are stored (float32 is exact)"
    )
    cache_top_k: Annotated[Int, Field(ge=1)] | None = Field(
        None,
        description="'cached': store only each view's k largest teacher logits (a smaller cache; the teacher's "
        "softmax is then renormalised over its top k, so not exact); unset stores all",
    )

    @field_validator("objective")
    @classmethod
    def _objective_known(cls, name: str | Range) -> str | Range:
        return name if isinstance(name, Range) else _known(OBJECTIVES, name)

    @model_validator(mode="after")
    def _objective_can_train(self) -> DistillSpec:
        """Ask each objective the search can pick whether it trains with every combination of the values its
        weights can take (the bounds or choices of their ranges: a weight is linear in them)."""
        names = self.objective.values() if isinstance(self.objective, Range) else [self.objective]
        for objective in map(OBJECTIVES.__getitem__, names):
            fields = objective.weighted_by
            options = [getattr(self, f).values() if isinstance(getattr(self, f), Range) else [getattr(self, f)]
                       for f in fields]
            for combination in itertools.product(*options):
                refusal = objective.refusal(**dict(zip(fields, combination)))
                if refusal:
                    raise ValueError(f"objective {refusal}")
            if self.label_smoothing and not objective.uses_labels:
                raise ValueError(f"label_smoothing: {self.label_smoothing:g} is not allowed with objective "
                                 f"'{objective.name}', which has no label term; allowed: 0, or an objective with "
                                 "one (" + ", ".join(o for o in OBJECTIVES.names() if OBJECTIVES[o].uses_labels) + ")")
            if objective.name == "ls" and not self.label_smoothing:
                raise ValueError("objective 'ls' needs label_smoothing above 0 (with 0 it is 'ce'), e.g. 0.1")
        return self

    def loss_params(self) -> LossParams:
        """What every objective reads, once per trial (the search has filled in searched values by then)."""
        return LossParams(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LossParams)})


class EnsembleSpec(_Section):
    include_teacher: bool = Field(
        False, description="Ens*k over the last k generations counting the teacher (the paper does so once)"
    )


def _control_from_boolean(value: Any) -> Any:
    # `control: true` keeps meaning one teacher′ per chain, `false` none.
    if isinstance(value, bool):
        return {"teachers": int(value)}
    if not isinstance(value, (dict, ControlSpec)):
        raise ValueError("give true, false or a mapping with keys teachers, equal_budget, label_smoothing")
    return value


class ControlSpec(_Section):
    teachers: Int = Field(
        1, ge=0, le=MAX_CONTROL_TEACHERS,
        description="teacher′s per chain: the teacher's recipe with fresh seeds. The first measures seed noise; the "
        "Teacher with k − 1 of them is the same-size baseline of Ens*k (k members), so Ens*k needs k − 1",
    )
    equal_budget: bool = Field(
        False, description="also train, per chain, one model for the chain's total epochs ((generations + 1) × "
        "train.epochs, lr_milestones scaled alike), compared with the last BAN generation",
    )
    label_smoothing: Annotated[Float, Field(gt=0, lt=1)] | None = Field(
        None, description="also train, per chain, the teacher's recipe with label smoothing ε (objective 'ls'), "
        "compared with BAN-1",
    )


class ReportSpec(_Section):
    primary: str | None = Field(
        None, description="the one comparison given a plain 95% verdict: 'COLUMN' (minus the Teacher) or 'COLUMN vs "
        "BASELINE'; default: the last BAN generation vs Teacher. Every other comparison is Holm-adjusted",
    )


class SearchSpec(_Section):
    trials: Int = Field(1, ge=1, le=MAX_TRIALS, description="trials per generation; they differ by seed and sampled settings")
    metric: Literal["val_error", "val_nll"] = Field("val_error", description="validation metric to minimise")
    warm_start: bool = Field(True, description="seed generation k+1's search with generation k's best settings")
    early_stopping: Literal["auto", "on", "off"] = Field(
        "auto", description="ASHA early stopping of bad trials; 'auto' turns it on when trials > 2"
    )
    grace_period: Int = Field(1, ge=1, description="ASHA: epochs every trial trains before it can be stopped")
    reduction_factor: Int = Field(4, ge=2, le=100, description="ASHA: keep the best 1/reduction_factor at each rung")

    def uses_asha(self) -> bool:
        return self.early_stopping == "on" or (self.early_stopping == "auto" and self.trials > 2)


class ChainStopSpec(_Section):
    min_improvement: Float = Field(
        ge=0, description="stop a chain when a generation's best validation metric does not beat its teacher's by this"
    )


class ResourcesSpec(_Section):
    workers_per_trial: Int = Field(1, ge=1, le=MAX_WORKERS, description="Ray Train workers (data-parallel ranks) per trial")
    cpus_per_worker: Float = Field(1.0, gt=0, le=MAX_CPUS_PER_WORKER)
    gpus_per_worker: Float = Field(0.0, ge=0, le=MAX_GPUS_PER_WORKER)
    max_failures: Int = Field(
        3, ge=0, le=MAX_FAILURES, description="worker failures a trial recovers from (restarting from its last checkpoint)"
    )
    trainer: Literal["auto", "train", "trial"] = Field(
        "auto",
        description="what trains a trial: 'train', a Ray Train TorchTrainer (data-parallel workers, GPUs; it costs "
        "seconds to start per trial); 'trial', one worker driven by the Tune trial itself (no start cost); 'auto': "
        "train with a GPU or more than one worker, else trial",
    )
    warm_processes: bool = Field(
        True,
        description="trainer 'trial' without a GPU: train in the sweep's warm processes, one per worker slot, which "
        "keep torch and the data loaded across generations (a fresh process costs seconds of CPU per group); false: "
        "in each Tune trial's own process, as trials with a GPU always do",
    )

    @field_validator("cpus_per_worker", "gpus_per_worker")
    @classmethod
    def _schedulable(cls, value: float) -> float:
        # Ray would round a finer request to its unit, and 0.00004 CPUs to none at all.
        if not math.isclose(round(value, RESOURCE_DECIMALS), value, rel_tol=0, abs_tol=1e-12):
            raise ValueError(
                f"a request finer than {RESOURCE_UNIT:g}, the unit Ray counts CPUs and GPUs in (it would round it); "
                f"allowed: a multiple of {RESOURCE_UNIT:g}"
            )
        return value

    def engine(self) -> Literal["train", "trial"]:
        if self.trainer != "auto":
            return self.trainer
        return "train" if self.gpus_per_worker > 0 or self.workers_per_trial > 1 else "trial"

    def on_host(self) -> bool:
        """Whether a trial trains in one of the sweep's warm processes (banray.trial.hosts)."""
        return self.engine() == "trial" and self.warm_processes and not self.gpus_per_worker

    @model_validator(mode="after")
    def _one_worker_in_a_trial(self) -> ResourcesSpec:
        if self.trainer == "trial" and self.workers_per_trial > 1:
            raise ValueError(
                f"trainer 'trial' trains in the Tune trial's own process, one worker, but workers_per_trial is "
                f"{self.workers_per_trial}; allowed: trainer 'train' or 'auto', or workers_per_trial: 1"
            )
        return self


# The longest name MLflow's SQL store keeps (experiments.name is String(256); MLflow's own check allows 500,
# which MySQL and PostgreSQL then refuse mid-sweep).
MAX_EXPERIMENT_NAME = 256


class TrackingSpec(_Section):
    uri: str | None = Field(
        None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else a local store in the sweep folder"
    )
    experiment: str | None = Field(
        None, min_length=1, max_length=MAX_EXPERIMENT_NAME, description="MLflow experiment; default: the sweep name"
    )

    @field_validator("uri")
    @classmethod
    def _server_is_a_url(cls, uri: str | None) -> str | None:
        return uri if uri is None else check_tracking_uri(uri)


# Sections and fields that do not change what is trained; they stay out of the spec hash.
_RUNTIME_SECTIONS = {"control", "ensembles", "report", "resources", "storage", "storage_endpoint", "tracking"}
_RUNTIME_FIELDS = {"train": {"checkpoint_every_s"}}

# Keys that once meant something and no longer do: a spec still giving one is told why, not just "unknown key".
_REMOVED_KEYS = {
    ("data", "loader_workers"): "the training batches are made on the device by tensor ops, with no DataLoader workers",
    ("data", "pin_memory"): "the data are moved to the training device once per process, not copied batch by batch",
}

def _known_arm(arm: str) -> str:
    if arm not in (MAIN_ARM, BUDGET_ARM, SMOOTHING_ARM) and not is_control(arm):
        raise ValueError("input should be 'main', 'control', 'control2' …, 'budget' or 'smoothing'")
    return arm


# A chain's generations ("main") or one of its side arms (banray.records): teacher′s, equal budget, label smoothing.
Arm = Annotated[str, AfterValidator(_known_arm)]


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3's bucket naming rules


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")  # what a URI starts with (RFC 3986)


def check_storage_root(storage: str) -> str:
    """`storage` if it is a local folder or an s3://bucket/prefix URI that banray can use; else ValueError."""
    if any(ord(c) < 32 for c in storage):
        raise ValueError("a storage path cannot hold control characters")
    scheme, sep, rest = storage.partition("://")
    looks_like_a_uri = _SCHEME.match(storage)
    if looks_like_a_uri and not sep:  # s3:/bucket/x would otherwise become a local folder named 's3:'
        raise ValueError(
            f"'{looks_like_a_uri[1]}:' starts a URI, but a URI needs '://'; allowed: s3://bucket/prefix, or a local "
            f"folder (write ./{cut(storage, 60)} if its name holds a colon)"
        )
    if sep and scheme != "s3":
        raise ValueError(f"use a local folder or an s3://bucket/prefix URI, not {scheme}://")
    if sep:
        bucket = rest.split("/", 1)[0]
        if not bucket:
            raise ValueError("an s3:// storage URI needs a bucket: s3://bucket/prefix")
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise ValueError(f"'{bucket}' is not an S3 bucket name (3-63 lowercase letters, digits, dots, hyphens)")
        if "//" in rest or any(part in (".", "..") for part in rest.split("/")):
            raise ValueError("an s3:// prefix cannot hold empty, '.' or '..' parts")
        return storage
    if storage.startswith("~") and os.path.expanduser(storage) == storage:
        user = storage[1:].split("/", 1)[0]
        raise ValueError(f"there is no user '{user}' whose home folder ~{user} could stand for")
    return storage


def check_http_url(url: str) -> str:
    """`url` if it is an http(s)://host[:port][/path] URL; else ValueError saying what is allowed. boto3 and
    MLflow take a malformed one and fail late, with a traceback, or at a host nobody meant."""
    allowed = "give a URL: http://host:port or https://host"
    if any(ord(c) <= 32 for c in url):
        raise ValueError(f"a URL cannot hold spaces or control characters; {allowed}")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or "://" not in url:
        raise ValueError(f"not an http(s):// URL; {allowed}")
    if not parts.hostname:
        raise ValueError(f"the URL names no host; {allowed}")
    try:
        port = parts.port
    except ValueError:
        port = 0  # urllib refuses ports above 65535 and non-numbers
    if port == 0:
        raise ValueError(f"the URL's port is not one of 1-65535; {allowed}")
    return url


def check_tracking_uri(uri: str) -> str:
    """`uri`, checked as a URL if it names an MLflow server (http or https); MLflow's other schemes (sqlite:,
    file:, databricks, a plugin's) are its own to judge."""
    if urlsplit(uri).scheme.lower() in ("http", "https"):
        check_http_url(uri)
    return uri


class SweepSpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100, description="sweep name")
    seed: Int = Field(0, ge=0, le=SEED_MAX, description="root seed; every chain, generation and trial derives its own")
    data: DataSpec
    model: ModelSpec
    student: ModelSpec | None = Field(None, description="model of generations ≥ 1; default: `model` (born again)")
    train: TrainSpec
    distill: DistillSpec = DistillSpec()
    generations: Int = Field(ge=1, le=MAX_GENERATIONS, description="student generations after the generation-0 teacher")
    chains: Int = Field(1, ge=1, le=MAX_CHAINS, description="independent lineages, each with its own seeds and (unless data.shared_split) its own "
                        "train/validation split and augmentation")
    control: Annotated[ControlSpec, BeforeValidator(_control_from_boolean)] = Field(
        ControlSpec(),
        description="the control arms trained per chain beside its generations: true (one teacher′, the seed-noise "
        "baseline; the default), false (none), or {teachers: K, equal_budget: bool, label_smoothing: ε}",
    )
    report: ReportSpec = ReportSpec()
    search: SearchSpec = SearchSpec()
    chain_stop: ChainStopSpec | None = Field(None, description="optional rule that ends a chain early")
    ensembles: EnsembleSpec = EnsembleSpec()
    resources: ResourcesSpec = ResourcesSpec()
    storage: str = Field(
        "./runs", min_length=1, description="local folder or s3://bucket/prefix for checkpoints, reports and sweep state"
    )
    storage_endpoint: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, ...) for s3:// storage; default $AWS_ENDPOINT_URL_S3"
    )
    tracking: TrackingSpec = TrackingSpec()

    @model_validator(mode="before")
    @classmethod
    def _no_removed_keys(cls, raw: Any) -> Any:
        for (section, key), reason in _REMOVED_KEYS.items():
            if isinstance(raw, dict) and isinstance(raw.get(section), dict) and key in raw[section]:
                raise ValueError(f"{section}.{key}: this setting was removed ({reason}); remove it from the spec")
        return raw

    @field_validator("storage")
    @classmethod
    def _storage_kind(cls, storage: str) -> str:
        return check_storage_root(storage)

    @field_validator("storage_endpoint")
    @classmethod
    def _endpoint_is_url(cls, endpoint: str | None) -> str | None:
        return endpoint if endpoint is None else check_http_url(endpoint)

    @model_validator(mode="after")
    def _fits_the_task(self) -> SweepSpec:
        task = dataset_kind(self.data.dataset)
        for key, model in (("model", self.model), ("student", self.student)):
            if model is not None and model_task(model.arch) != task:
                raise ValueError(
                    f"{key}.arch '{model.arch}' is a {model_task(model.arch)} model but data.dataset "
                    f"'{self.data.dataset}' is a {task} dataset; allowed: "
                    + ", ".join(name for name in MODELS.names() if model_task(name) == task)
                )
        if task == "language_model" and self.search.metric != "val_nll":
            raise ValueError("search.metric must be 'val_nll' (log perplexity) for a language model dataset")
        if self.distill.cache_top_k is not None and self.distill.teacher != "cached":
            raise ValueError(
                f"distill.cache_top_k: {self.distill.cache_top_k} is not allowed with distill.teacher "
                f"'{self.distill.teacher}': it sets how the teacher-logit cache is stored; set distill.teacher: cached "
                "or remove it"
            )
        if task == "language_model" and self.distill.teacher == "cached":
            raise ValueError(
                "distill.teacher: 'cached' is not allowed for a language model dataset (the teacher's hidden state "
                "follows the student's chunks); allowed: online"
            )
        if task == "language_model" and self.distill.teacher_from == "ensemble":
            raise ValueError(
                "distill.teacher_from: 'ensemble' is not allowed for a language model dataset (banray averages no "
                "language models' per-token softmax over the vocabulary); allowed: previous"
            )
        return self

    @model_validator(mode="after")
    def _grace_period_fits(self) -> SweepSpec:
        # Ray's ASHAScheduler checks this only once the sweep runs, against max_t = epochs + 1, and a grace
        # period beyond the last epoch would never stop anything.
        if self.search.uses_asha() and self.search.grace_period > self.train.epochs:
            raise ValueError(
                f"search.grace_period: {self.search.grace_period} is not allowed: early stopping lets every trial "
                f"train grace_period epochs before judging it, but train.epochs is {self.train.epochs}; "
                f"allowed: 1..{self.train.epochs}, or search.early_stopping: off"
            )
        return self

    @model_validator(mode="after")
    def _equal_budget_fits(self) -> SweepSpec:
        epochs = (self.generations + 1) * self.train.epochs
        if self.control.equal_budget and epochs > MAX_EPOCHS:
            raise ValueError(
                f"control.equal_budget: the chain's total epochs, (generations + 1) × train.epochs = {epochs}, exceed "
                f"{MAX_EPOCHS}; allowed: false, or fewer generations or epochs"
            )
        return self

    @model_validator(mode="after")
    def _primary_is_a_comparison(self) -> SweepSpec:
        made = comparisons(self.report_columns(), self.generations)
        if self.report.primary is not None and self.primary_comparison() not in made:
            raise ValueError(
                f"report.primary: {shorten(self.report.primary)} is not a comparison this sweep's report makes; "
                "allowed: " + ", ".join(f"'{comparison_name(*pair)}'" for pair in made)
            )
        return self

    def model_of(self, generation: int) -> ModelSpec:
        return self.model if generation == 0 or self.student is None else self.student

    def objective_of(self, generation: int) -> str:
        return "ce" if generation == 0 else self.distill.objective

    def search_space(self, generation: int) -> dict[str, Range]:
        """The ranges searched in `generation`, by dotted key. Generation 0 has no teacher terms to search."""
        sections = ("train",) if generation == 0 else ("train", "distill")
        return {f"{s}.{name}": r for s in sections for name, r in getattr(self, s).ranges().items()}

    def side_arms(self) -> list[str]:
        """The side arms each chain trains beside its generations, in the order they start."""
        arms = [control_arm(i) for i in range(self.control.teachers)]
        return arms + [BUDGET_ARM] * self.control.equal_budget + [SMOOTHING_ARM] * (self.control.label_smoothing is not None)

    def budget_train(self) -> TrainSpec:
        """The equal-budget arm's recipe: the teacher's, stretched to the chain's total epochs."""
        stretch = self.generations + 1
        return self.train.model_copy(update={"epochs": stretch * self.train.epochs,
                                             "lr_milestones": [stretch * m for m in self.train.lr_milestones]})

    def report_columns(self) -> list[str]:
        """The report's columns a complete run of this spec fills."""
        sizes = list(ensemble_members(list(range(self.generations + 1)), self.ensembles.include_teacher))
        return report_columns(self.generations, sizes, self.control.teachers, self.control.equal_budget,
                              self.control.label_smoothing is not None)

    def primary_comparison(self) -> tuple[str, str]:
        """(column, baseline) of the report's primary comparison."""
        if self.report.primary is None:
            return f"BAN-{self.generations}", "Teacher"
        column, _, baseline = self.report.primary.partition(" vs ")
        return column.strip(), baseline.strip() or "Teacher"

    def _recipe(self, generation: int, arm: str) -> tuple[TrainSpec, DistillSpec]:
        if arm == BUDGET_ARM:
            return self.budget_train(), DistillSpec(objective="ce")
        if arm == SMOOTHING_ARM:
            return self.train, DistillSpec(objective="ls", label_smoothing=self.control.label_smoothing)
        return self.train, self.distill if generation > 0 else DistillSpec(objective="ce")

    def generation_settings(
        self, chain: int, generation: int, teacher_checkpoint: str | None, arm: str = MAIN_ARM,
        teacher_checkpoints: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The settings shared by every trial of one generation (or of a side arm, generation 0 with its arm's
        recipe); a trial adds `trial` and `seed`, and the search (if any) fills in the ranges of
        `search_space(generation)`. `teacher_checkpoint` is generation − 1's; `teacher_checkpoints`, with
        distill.teacher_from 'ensemble', those of generations 0 … generation − 1, the ensemble's members."""
        train, distill = self._recipe(generation, arm)
        return {
            "sweep": self.name,
            "seed_root": self.seed,
            "spec_hash": self.spec_hash(),
            "chain": chain,
            "generation": generation,
            "arm": arm,
            "data": self.chain_data(chain).model_dump(mode="json"),
            "model": self.model_of(generation).model_dump(mode="json"),
            "teacher_model": self.model_of(generation - 1).model_dump(mode="json") if generation > 0 else None,
            "train": train.model_dump(mode="json", exclude_none=True),
            "distill": distill.model_dump(mode="json", exclude_none=True),
            "metric": self.search.metric,
            "teacher_checkpoint": teacher_checkpoint,
            "teacher_checkpoints": list(teacher_checkpoints),
            "teacher_models": [self.model_of(g).model_dump(mode="json") for g in range(len(teacher_checkpoints))],
        }

    def chain_data(self, chain: int) -> DataSpec:
        """The data a chain trains on: its own train/validation split and augmentation stream, seeded by
        (data.seed, chain), unless data.shared_split. The test split never moves."""
        if self.data.shared_split:
            return self.data
        return self.data.model_copy(update={"seed": derive_seed(self.data.seed, chain)})

    def spec_hash(self) -> str:
        """Hash of everything that shapes training: a teacher is only valid for the spec it came from."""
        science = self.model_dump(mode="json", exclude={**dict.fromkeys(_RUNTIME_SECTIONS, True), **_RUNTIME_FIELDS})
        # Which engine trains a trial shapes its data order on more than one worker: part of what was trained.
        science["trainer"] = self.resources.engine()
        return hashlib.sha256(json.dumps(science, sort_keys=True).encode()).hexdigest()[:16]


def with_storage(spec: SweepSpec, storage: str) -> SweepSpec:
    """`spec` with its storage root replaced by a command line's --storage, validated as the spec's own is."""
    try:
        check_storage_root(storage)
    except ValueError as exc:
        raise SpecError(f"--storage: {shorten(storage)} is not allowed: {exc}") from None
    return spec.model_copy(update={"storage": storage})


def derive_seed(root: int, *path: int) -> int:
    """A well-mixed 31-bit seed for the node at `path` (chain, generation, trial) below the root seed."""
    import numpy as np

    return int(np.random.SeedSequence([root, *path]).generate_state(1)[0] >> 1)


def _seed_branch(arm: str) -> tuple[int, ...]:
    """Where a side arm's trials draw their seeds in the seed tree: teacher′ i at (1,) or (1, i), the
    equal-budget arm at (2,), the label-smoothing arm at (3,); a chain's generations at ()."""
    if is_control(arm):
        index = int(arm.removeprefix("control") or 1) - 1
        return (1,) if index == 0 else (1, index)
    return {MAIN_ARM: (), BUDGET_ARM: (2,), SMOOTHING_ARM: (3,)}[arm]


def trial_seed(root: int, chain: int, generation: int, trial: int, arm: str = MAIN_ARM) -> int:
    """A trial's seed. A side arm's trials draw from their own branch of the seed tree: fresh seeds."""
    return derive_seed(root, chain, generation, trial, *_seed_branch(arm))


def role(generation: int, arm: str = MAIN_ARM) -> str:
    """What a generation's models are in their chain: its teacher, a student, a teacher′ ("control"), the
    equal-budget or the label-smoothing model."""
    if arm != MAIN_ARM:
        return "control" if is_control(arm) else arm
    return "teacher" if generation == 0 else "student"


def group_name(chain: int, generation: int, arm: str = MAIN_ARM) -> str:
    """The name of a (chain, generation) group, or of a chain's side arm, in Tune, Train, its MLflow
    generation run (its trials' are `<name>-trial<t>`) and the folders of `banray trial`; a chain's MLflow run
    is named apart (results.tracking.chain_run_name)."""
    return f"chain{chain}-gen{generation}" if arm == MAIN_ARM else f"chain{chain}-{arm}-gen0"


class TrialSettings(_Section):
    """Everything one trial trains with: the spec resolved for a (chain, generation, trial)."""

    sweep: str
    spec_hash: str
    chain: int
    generation: int
    arm: Arm = MAIN_ARM
    trial: int
    seed: int
    data: DataSpec
    model: ModelSpec
    teacher_model: ModelSpec | None = None  # what the teacher checkpoint must be (its arch and kwargs)
    train: TrainSpec
    distill: DistillSpec
    metric: str
    teacher_checkpoint: str | None = None  # generation − 1's
    # distill.teacher_from 'ensemble': the checkpoints of generations 0 … generation − 1, the ensemble teacher's
    # members in generation order, and what each must be (its arch and kwargs); empty otherwise.
    teacher_checkpoints: list[str] = []
    teacher_models: list[ModelSpec] = []
    # The folder (local or s3://) holding teacher-logit caches (distill.teacher 'cached'); None: node-local disk.
    teacher_cache: str | None = None

    @property
    def role(self) -> str:
        return role(self.generation, self.arm)

    def teachers(self) -> list[tuple[int, ModelSpec | None, str]]:
        """(generation, model, checkpoint) of each model the student learns from, in generation order:
        generation − 1's alone, or every member of its ensemble teacher."""
        if self.distill.teacher_from == "ensemble":
            return list(zip(range(self.generation), self.teacher_models, self.teacher_checkpoints))
        return [(self.generation - 1, self.teacher_model, self.teacher_checkpoint)]

    @model_validator(mode="after")
    def _members_fit(self) -> TrialSettings:
        ensemble = self.distill.teacher_from == "ensemble" and self.teacher_checkpoint is not None
        members = list(range(self.generation)) if ensemble else []
        if len(self.teacher_checkpoints) != len(members) or len(self.teacher_models) != len(members):
            raise ValueError(
                f"teacher_checkpoints: generation {self.generation} with distill.teacher_from "
                f"'{self.distill.teacher_from}' learns from {len(members)} ensemble member(s) (generations "
                f"{members}), but its settings name {len(self.teacher_checkpoints)} checkpoint(s) and "
                f"{len(self.teacher_models)} model(s)"
            )
        if ensemble and self.teacher_checkpoints[-1] != self.teacher_checkpoint:
            raise ValueError(f"teacher_checkpoints: the last member {self.teacher_checkpoints[-1]!r} is not "
                             f"generation {self.generation - 1}'s checkpoint {self.teacher_checkpoint!r}")
        return self

    @model_validator(mode="after")
    def _concrete(self) -> TrialSettings:
        left = [f"{section}.{name}" for section in ("train", "distill") for name in getattr(self, section).ranges()]
        if left:
            raise ValueError(f"a trial's settings must be values, but {', '.join(left)} are still search ranges")
        return self


_UNION_TAGS = ("value", "range")  # the branches of a searchable field; not part of the key path


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys allowed at `loc` (the parent of an unknown key), found by walking the spec's models."""
    current: type[BaseModel] | None = model
    for part in loc:
        if part == "range":
            current = Range
            continue
        field = current.model_fields.get(part) if current is not None and isinstance(part, str) else None
        if field is None:
            return []
        annotation = field.annotation
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        nested = [a for a in candidates if issubclass(a, BaseModel)]
        current = nested[0] if nested else None
    return list(current.model_fields) if current is not None else []


def cut(text: str, limit: int = 200) -> str:
    """`text` cut to `limit` characters: an error line names a value or a reason, it does not reprint a page."""
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def shorten(value: Any, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters."""
    return cut(repr(value), limit)


def _format_error(error: dict, path: str) -> str:
    loc = tuple(error["loc"])
    where = ".".join(str(p) for p in loc if p not in _UNION_TAGS)
    kind, msg = error["type"], error["msg"].removeprefix("Value error, ")
    msg = msg[:1].lower() + msg[1:]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(SweepSpec, loc[:-1])
        return f"{path}: {where}: unknown key; allowed keys here: {', '.join(allowed)}"
    if kind == "missing":
        return f"{path}: {where}: required key is missing"
    if kind in ("model_type", "model_attributes_type"):  # a value where a section belongs
        allowed = _allowed_keys(SweepSpec, loc)
        return f"{path}: {where}: {shorten(error['input'])} is not allowed: give a mapping with keys {', '.join(allowed)}"
    if isinstance(error["input"], dict):
        if kind == "value_error":  # a check across keys: the message names the keys involved
            return f"{path}: {where}: {msg}" if where else f"{path}: {msg}"
        return f"{path}: {where}: a search range or mapping is not allowed here; give a single value ({msg})"
    return f"{path}: {where}: {shorten(error['input'])} is not allowed: {msg}"


def parse_spec(raw: Any, path: str = "spec") -> SweepSpec:
    if raw is None:  # an empty file (or only comments)
        raise SpecError(f"{path}: the spec is empty; give a mapping with keys {', '.join(SweepSpec.model_fields)}")
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: the top level must be a mapping with keys {', '.join(SweepSpec.model_fields)}")
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError([_format_error(e, path) for e in exc.errors()]) from None


# Bounds of the spec reader: a spec is a page of YAML, so anything far beyond these is a mistake or an attack
# (a 500-byte file of nested YAML aliases expands to billions of values).
MAX_SPEC_BYTES = 1 << 20
MAX_SPEC_VALUES = 10_000  # after alias expansion: each use of an alias counts its whole value again
MAX_SPEC_DEPTH = 32


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys (by default the last one silently wins)."""

    def construct_mapping(self, node, deep=False):
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden by later keys
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in first_line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {shorten(key, 40)} (first given at line {first_line[key]})",
                    key_node.start_mark,
                )
            if isinstance(key, typing.Hashable):
                first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


class _TooLarge(Exception):
    pass


def _shape(node: yaml.Node, visiting: set[int], known: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(values, depth) of a composed YAML node with its aliases expanded; memoised, so an alias bomb costs
    its number of distinct nodes, not its expansion."""
    if id(node) in known:
        return known[id(node)]
    if id(node) in visiting:
        raise _TooLarge("an alias refers to a value that contains it (a recursive structure)")
    visiting.add(id(node))
    if isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = node.value
    else:
        children = []
    values, depth = 1, 0
    for child in children:
        child_values, child_depth = _shape(child, visiting, known)
        values, depth = values + child_values, max(depth, child_depth)
        if values > MAX_SPEC_VALUES:
            raise _TooLarge(f"it holds more than {MAX_SPEC_VALUES:,} values (each use of an alias counts again)")
    if depth + 1 > MAX_SPEC_DEPTH:
        raise _TooLarge(f"it is nested more than {MAX_SPEC_DEPTH} levels deep")
    visiting.discard(id(node))
    known[id(node)] = (values, depth + 1)
    return known[id(node)]


def _read_yaml(path: Path) -> Any:
    """The YAML document at `path`, within the reader's bounds; SpecError naming the file otherwise."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec: {exc.strerror or exc}") from None
    return spec_document(data, str(path))


def spec_document(data: bytes, path: str) -> Any:
    """The YAML document in a spec file's bytes, within the reader's bounds; SpecError naming the file (and
    the line and column of a YAML error) otherwise."""
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: not a spec: larger than {MAX_SPEC_BYTES >> 20} MiB (a spec is a page of YAML)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start}") from None
    return _parse_yaml(text, path)


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """Where and what a YAML error of any stage is: the scanner, parser, composer and constructor mark the
    spot; the reader (a control character) gives only an offset into the text."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position)
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1)
        return f" at line {line + 1}, column {column + 1}: character {exc.character:#06x} is not allowed ({exc.reason})"
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc).splitlines()[0]
    return f"{where}: {problem}"


def _parse_yaml(text: str, path: str) -> Any:
    loader = None
    try:
        loader = _SpecLoader(text)  # the reader checks every character here
        node = loader.get_single_node()
        if node is None:
            return None
        _shape(node, set(), {})
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML{_yaml_problem(exc, text)}") from None
    except _TooLarge as exc:
        raise SpecError(f"{path}: not a spec: {exc}") from None
    except RecursionError:
        raise SpecError(f"{path}: not a spec: it is nested more than {MAX_SPEC_DEPTH} levels deep") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    return parse_spec(_read_yaml(path), str(path))
