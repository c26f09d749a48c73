"""Training objectives, selected by name through `get_objective`.

Convention (fixed here, pinned by golden-value tests): in `kd`, **α weighs the teacher term** and
the label term gets 1 − α; `ban+l` weighs its two terms with `teacher_weight` and `label_weight`
(a plain sum by default, the natural reading of the paper). KL and cross-entropy terms are averaged
over the batch ("batchmean"), never over classes. Teacher terms at temperature T are scaled by T² so
their gradient magnitude does not depend on T (Hinton et al.); at T = 1, the paper's setting, the
factor is 1. Notation as in the paper: teacher softmax p, student softmax q, labels y, batch size b.
For language models every time step counts as one sample.

Each objective is an `Objective`: calling it returns the scalar loss to minimise, and
`Objective.terms` returns the same loss split into named, already weighted terms (their sum is the
loss) so the worker loop can log every term separately.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from banray.catalog.registry import Registry

Terms = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LossParams:
    """What the objectives read, built once per trial from the spec (banray.spec.DistillSpec.loss_params),
    the only place of their defaults."""

    alpha: float
    temperature: float
    label_weight: float
    teacher_weight: float
    label_smoothing: float = 0.0  # ε of every label term: the target is (1 − ε)·y + ε/classes


TermsFn = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor, LossParams], Terms]
WeightsFn = Callable[..., dict[str, float]]  # the LossParams fields it reads, by keyword → each term's weight


@dataclass(frozen=True)
class Objective:
    name: str
    needs_teacher: bool
    terms_fn: TermsFn
    uses_labels: bool = True  # it has a label term (which label_smoothing smooths)
    # An objective whose terms' weights are settings declares them (and which of its terms carry the teacher);
    # validation asks it which settings it cannot train with.
    weights: WeightsFn | None = None
    teacher_terms: frozenset[str] = frozenset()

    @property
    def weighted_by(self) -> tuple[str, ...]:
        """The LossParams fields its terms' weights depend on."""
        return tuple(inspect.signature(self.weights).parameters) if self.weights else ()

    def refusal(self, **values: float) -> str | None:
        """Why this objective cannot train with these `weighted_by` values, or None: every term weighted 0 makes
        the loss a constant (the student learns nothing); a distillation objective whose teacher terms are all
        weighted 0 ignores its teacher (the student learns from labels alone: generation 0's recipe)."""
        if self.weights is None:
            return None
        weights = self.weights(**values)
        given = ", ".join(f"{name} {value:g}" for name, value in values.items())
        if not any(weights.values()):
            return (
                f"'{self.name}' with {given} weighs every term 0: the loss is constant and the student learns "
                "nothing; give the teacher term a weight above 0"
            )
        if self.needs_teacher and not any(weights[term] for term in self.teacher_terms):
            return (
                f"'{self.name}' with {given} weighs its teacher term 0: the student learns from the labels alone, "
                "which is generation 0's recipe, not distillation; give the teacher term a weight above 0"
            )
        return None

    def terms(self, student_logits, teacher_logits, labels, params: LossParams) -> Terms:
        """The loss as named terms, each already weighted."""
        return self.terms_fn(student_logits, teacher_logits, labels, params)

    def __call__(self, student_logits, teacher_logits, labels, params: LossParams) -> torch.Tensor:
        return sum(self.terms(student_logits, teacher_logits, labels, params).values())


OBJECTIVES: Registry[Objective] = Registry("objective")


def _register(name: str, *, needs_teacher: bool, **weighting):
    def add(fn: TermsFn) -> TermsFn:
        OBJECTIVES.register(name)(Objective(name, needs_teacher, fn, **weighting))
        return fn

    return add


def get_objective(name: str) -> Objective:
    return OBJECTIVES[name]


def soft_cross_entropy(student_logits, target_probs, temperature: float) -> torch.Tensor:
    """T² · mean over the batch of −Σ_i target_i · log softmax(z/T)_i."""
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    return -(target_probs * log_q).sum(dim=1).mean() * temperature**2


def teacher_probs(teacher_logits, temperature: float) -> torch.Tensor:
    return F.softmax(teacher_logits.float() / temperature, dim=1)


def label_cross_entropy(student_logits, labels, params: LossParams) -> torch.Tensor:
    """CE(y, q) averaged over the batch, against labels smoothed by params.label_smoothing."""
    return F.cross_entropy(student_logits, labels, label_smoothing=params.label_smoothing)


@_register("ce", needs_teacher=False)
def _ce(student_logits, teacher_logits, labels, params: LossParams) -> Terms:
    """Labels only: CE(y, q). Generation 0 (the teacher) always trains with this."""
    return {"ce": label_cross_entropy(student_logits, labels, params)}


# Label smoothing (Szegedy et al.), the regulariser Yuan et al. find behind much of KD's gain: labels only,
# CE((1 − ε)·y + ε/classes, q); the spec asks for ε > 0 with it (at 0 it is 'ce').
_register("ls", needs_teacher=False)(_ce)


@_register("ban", needs_teacher=True, uses_labels=False)
def _ban(student_logits, teacher_logits, labels, params: LossParams) -> Terms:
    """Born-Again (paper Eq. 2): teacher-only T²·CE(p_T, q_T); no label term.

    With a fixed teacher this equals KL(p‖q) plus a constant; at T = 1 its gradient with respect to
    the student logits is (q − p) / b (paper Eq. 5 averaged over the batch).
    """
    p = teacher_probs(teacher_logits, params.temperature)
    return {"teacher_ce": soft_cross_entropy(student_logits, p, params.temperature)}


def _ban_l(student_logits, teacher_logits, labels, params: LossParams) -> Terms:
    """BAN+L (paper Table 2): teacher_weight·T²·CE(p_T, q_T) + label_weight·CE(y, q).

    The paper gives no weights; the default (1, 1) is a plain sum. At T = 1 the gradient is
    (teacher_weight·(q − p) + label_weight·(q − y)) / b.
    """
    p = teacher_probs(teacher_logits, params.temperature)
    return {
        "teacher_ce": params.teacher_weight * soft_cross_entropy(student_logits, p, params.temperature),
        "ce": params.label_weight * label_cross_entropy(student_logits, labels, params),
    }


# The paper writes "BAN+L"; `ban_l` is the same objective for places where "+" is awkward.
_BAN_L_WEIGHTS = dict(
    weights=lambda teacher_weight, label_weight: {"teacher_ce": teacher_weight, "ce": label_weight},
    teacher_terms=frozenset({"teacher_ce"}),
)
_register("ban+l", needs_teacher=True, **_BAN_L_WEIGHTS)(_ban_l)
_register("ban_l", needs_teacher=True, **_BAN_L_WEIGHTS)(_ban_l)


@_register(
    "kd", needs_teacher=True, weights=lambda alpha: {"kd": alpha, "ce": 1.0 - alpha}, teacher_terms=frozenset({"kd"})
)
def _kd(student_logits, teacher_logits, labels, params: LossParams) -> Terms:
    """Hinton KD: α·T²·KL(p_T ‖ q_T) + (1 − α)·CE(y, q), KL averaged over the batch."""
    temperature = params.temperature
    kl = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits.float() / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return {
        "kd": params.alpha * temperature**2 * kl,
        "ce": (1.0 - params.alpha) * label_cross_entropy(student_logits, labels, params),
    }


def _data_parallel_sum(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(Σ of `local` over the data-parallel ranks, their number); (local, 1) outside a process group.

    The sum carries no gradient across ranks; CWTM's normaliser depends only on the frozen teacher."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return local, 1
    ranks = torch.distributed.get_world_size()
    if ranks == 1:
        return local, 1
    total = local.detach().clone()
    torch.distributed.all_reduce(total)
    return total, ranks


def _global_cwtm_weights(teacher_logits, temperature: float) -> tuple[torch.Tensor, int]:
    confidence = teacher_probs(teacher_logits, temperature).max(dim=1).values
    total, ranks = _data_parallel_sum(confidence.sum())
    return confidence / total, ranks


def cwtm_weights(teacher_logits, temperature: float) -> torch.Tensor:
    """w_s = max_j p_{j,s} / Σ_u max_j p_{j,u}: the teacher's confidence, normalised over the mini-batch;
    under data parallelism that is the global batch (every rank's shard), so they sum to 1 over all ranks."""
    return _global_cwtm_weights(teacher_logits, temperature)[0]


@_register("cwtm", needs_teacher=True)
def _cwtm(student_logits, teacher_logits, labels, params: LossParams) -> Terms:
    """Confidence-Weighted by Teacher Max (paper Eq. 10): Σ_s w_s · CE(y_s, q_s).

    Only the teacher's max probability is used, also when the teacher is wrong. Because the weights
    sum to 1 the loss is on the scale of a mean CE; at T = 1 its gradient for sample s is w_s·(q_s − y_s).
    With R data-parallel ranks each returns R · Σ_{s in its shard} w_s·CE_s: DDP averages the ranks'
    gradients (÷ R), so the step is Eq. 10's on the global batch, and the ranks' mean loss is its value.
    """
    weights, ranks = _global_cwtm_weights(teacher_logits, params.temperature)
    smoothing = params.label_smoothing
    loss = (weights * F.cross_entropy(student_logits, labels, reduction="none", label_smoothing=smoothing)).sum()
    return {"weighted_ce": loss if ranks == 1 else ranks * loss}


def permute_non_argmax(probs: torch.Tensor) -> torch.Tensor:
    """φ(p) of paper Eq. 11: each row keeps its argmax entry in place; the other n − 1 entries are
    shuffled among the non-argmax positions, freshly per row and per call (torch's global RNG)."""
    rows, classes = probs.shape
    argmax = probs.argmax(dim=1, keepdim=True)
    # Targets: the non-argmax positions in order, then the argmax. Sources: the same positions in a
    # random order, then the argmax. Sorting a key whose argmax entry is the largest does both.
    position_key = torch.arange(classes, device=probs.device, dtype=torch.float).expand(rows, classes).clone()
    position_key.scatter_(1, argmax, float(classes))
    source_key = torch.rand(rows, classes, device=probs.device)
    source_key.scatter_(1, argmax, 2.0)
    targets, sources = position_key.argsort(dim=1), source_key.argsort(dim=1)
    return torch.zeros_like(probs).scatter_(1, targets, probs.gather(1, sources))


@_register("dkpp", needs_teacher=True, uses_labels=False)
def _dkpp(student_logits, teacher_logits, labels, params: LossParams) -> Terms:
    """Dark Knowledge with Permuted Predictions (paper Eq. 11): teacher-only T²·CE(φ(p_T), q_T).

    φ keeps the teacher's argmax probability at its position and permutes the rest, destroying the
    class similarities while keeping every permutation-invariant statistic. At T = 1 the gradient is
    (q − φ(p)) / b.
    """
    permuted = permute_non_argmax(teacher_probs(teacher_logits, params.temperature))
    return {"teacher_ce": soft_cross_entropy(student_logits, permuted, params.temperature)}
