import gc
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from banray.catalog.losses import OBJECTIVES, cwtm_weights, get_objective, permute_non_argmax
from banray.spec import DistillSpec


def params(**values):
    """The loss parameters a trial builds from its spec: the spec's defaults, with `values` set."""
    return DistillSpec(**values).loss_params()

# One sample, three classes: small enough to compute every term by hand.
Z = torch.tensor([[1.0, 2.0, 0.5]])  # student logits
T = torch.tensor([[2.0, 0.0, 1.0]])  # teacher logits
Y = torch.tensor([1])


def softmax(xs):
    exps = [math.exp(x) for x in xs]
    return [e / sum(exps) for e in exps]


def test_registry_lists_objectives_and_rejects_unknown():
    assert OBJECTIVES.names() == ["ban", "ban+l", "ban_l", "ce", "cwtm", "dkpp", "kd", "ls"]
    with pytest.raises(KeyError, match="unknown objective 'bann'; allowed: ban, ban\\+l, ban_l, ce, cwtm, dkpp, kd, ls"):
        get_objective("bann")


def test_ce_is_label_cross_entropy():
    q = softmax([1.0, 2.0, 0.5])
    loss = get_objective("ce")(Z, None, Y, params(alpha=0.5, temperature=1.0))
    assert loss.item() == pytest.approx(-math.log(q[1]), rel=1e-6)


def test_ban_is_teacher_cross_entropy_at_t1():
    p, q = softmax([2.0, 0.0, 1.0]), softmax([1.0, 2.0, 0.5])
    expected = -sum(pi * math.log(qi) for pi, qi in zip(p, q))
    loss = get_objective("ban")(Z, T, Y, params(alpha=0.3, temperature=1.0))
    assert loss.item() == pytest.approx(expected, rel=1e-6)  # ≈ 1.8349, labels and α play no part


def test_ban_at_temperature_scales_by_t_squared():
    temperature = 2.0
    p, q = softmax([1.0, 0.0, 0.5]), softmax([0.5, 1.0, 0.25])
    expected = -sum(pi * math.log(qi) for pi, qi in zip(p, q)) * temperature**2
    loss = get_objective("ban")(Z, T, Y, params(alpha=0.5, temperature=temperature))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_ban_gradient_is_q_minus_p_over_batch():
    torch.manual_seed(0)
    batch = 5
    student = torch.randn(batch, 7, requires_grad=True)
    teacher = torch.randn(batch, 7)
    get_objective("ban")(student, teacher, torch.zeros(batch, dtype=torch.long), params(alpha=0.5, temperature=1.0)).backward()
    expected = (F.softmax(student.detach(), dim=1) - F.softmax(teacher, dim=1)) / batch
    torch.testing.assert_close(student.grad, expected)


def test_kd_matches_hand_computed_value_with_alpha_on_teacher_term():
    alpha, temperature = 0.7, 2.0
    p, q = softmax([1.0, 0.0, 0.5]), softmax([0.5, 1.0, 0.25])
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    ce = -math.log(softmax([1.0, 2.0, 0.5])[1])
    expected = alpha * temperature**2 * kl + (1 - alpha) * ce
    objective = get_objective("kd")
    assert objective(Z, T, Y, params(alpha=alpha, temperature=temperature)).item() == pytest.approx(expected, rel=1e-6)
    terms = objective.terms(Z, T, Y, params(alpha=alpha, temperature=temperature))
    assert terms["kd"].item() == pytest.approx(alpha * temperature**2 * kl, rel=1e-6)
    assert terms["ce"].item() == pytest.approx((1 - alpha) * ce, rel=1e-6)


def test_kd_extremes_of_alpha():
    kd = get_objective("kd")
    assert kd(Z, T, Y, params(alpha=0.0, temperature=3.0)).item() == pytest.approx(
        get_objective("ce")(Z, None, Y, params(alpha=0.0, temperature=1.0)).item()
    )
    # α = 1 at T = 1: KL(p‖q) = CE(p, q) − H(p), i.e. BAN minus the teacher's entropy.
    p = F.softmax(T, dim=1)
    entropy = -(p * p.log()).sum().item()
    assert kd(Z, T, Y, params(alpha=1.0, temperature=1.0)).item() == pytest.approx(
        get_objective("ban")(Z, T, Y, params(alpha=1.0, temperature=1.0)).item() - entropy, rel=1e-6
    )


def test_kl_is_averaged_over_the_batch_not_the_classes():
    batch = torch.cat([Z, Z, Z]), torch.cat([T, T, T]), torch.cat([Y, Y, Y])
    single = get_objective("kd")(Z, T, Y, params(alpha=1.0, temperature=1.0))
    assert get_objective("kd")(*batch, params(alpha=1.0, temperature=1.0)).item() == pytest.approx(single.item(), rel=1e-6)


def test_teacher_needs_are_declared():
    assert not get_objective("ce").needs_teacher
    assert all(get_objective(name).needs_teacher for name in ("ban", "ban+l", "kd", "cwtm", "dkpp"))


# A fixed batch of two samples for the paper's other objectives; the second teacher is wrong.
Z2 = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 1.0]])
T2 = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
Y2 = torch.tensor([1, 2])


def mean_ce(targets, logits_rows):
    return sum(-sum(t * math.log(q) for t, q in zip(target, softmax(row))) for target, row in zip(targets, logits_rows)) / len(targets)


def test_ban_l_is_a_weighted_sum_of_teacher_and_label_terms():
    teacher_term = mean_ce([softmax(r) for r in T2.tolist()], Z2.tolist())
    label_term = mean_ce([[0, 1, 0], [0, 0, 1]], Z2.tolist())
    ban_l = get_objective("ban+l")
    assert ban_l(Z2, T2, Y2, params()).item() == pytest.approx(teacher_term + label_term, rel=1e-6)  # default: plain sum
    weighted = ban_l(Z2, T2, Y2, params(teacher_weight=0.25, label_weight=2.0))
    assert weighted.item() == pytest.approx(0.25 * teacher_term + 2.0 * label_term, rel=1e-6)
    assert get_objective("ban_l").terms_fn is ban_l.terms_fn


def test_cwtm_weights_label_ce_by_normalised_teacher_max_even_when_wrong():
    confidence = [max(softmax(r)) for r in T2.tolist()]  # ≈ 0.665 and 0.910 (the second teacher is wrong)
    weights = [c / sum(confidence) for c in confidence]
    ces = [-math.log(softmax(row)[label]) for row, label in zip(Z2.tolist(), Y2.tolist())]
    expected = sum(w * ce for w, ce in zip(weights, ces))
    assert get_objective("cwtm")(Z2, T2, Y2, params()).item() == pytest.approx(expected, rel=1e-6)
    assert cwtm_weights(torch.randn(16, 10), 1.0).sum().item() == pytest.approx(1.0)


def test_cwtm_gradient_is_weighted_label_gradient():
    z = Z2.clone().requires_grad_(True)
    get_objective("cwtm")(z, T2, Y2, params()).backward()
    weights = cwtm_weights(T2, 1.0)
    expected = weights[:, None] * (F.softmax(Z2, dim=1) - F.one_hot(Y2, 3))  # paper Eq. 10
    torch.testing.assert_close(z.grad, expected)


def _cwtm_case():
    """A tiny student and a batch of 5 (split 3 + 2 over two ranks: uneven shards need no sample count)."""
    torch.manual_seed(0)
    return nn.Linear(4, 3), torch.randn(5, 4), 2 * torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])


def _save_cwtm_shard(rank: int, out_dir: str) -> None:
    student, x, t, y = _cwtm_case()
    model = DistributedDataParallel(student)  # averages the ranks' gradients, as in a Ray Train trial
    rows = slice(0, 3) if rank == 0 else slice(3, 5)
    loss = get_objective("cwtm")(model(x[rows]), t[rows], y[rows], params(temperature=2.0))
    loss.backward()
    result = {"loss": loss.detach(), "weights": cwtm_weights(t[rows], 2.0)}
    torch.save({**result, "grads": [p.grad for p in student.parameters()]}, f"{out_dir}/{rank}.pt")


def _cwtm_on_a_shard(rank: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        _save_cwtm_shard(rank, out_dir)
        torch.distributed.barrier()  # neither rank tears its connections down while the other still talks
    finally:
        # DDP sits in a reference cycle that holds the process group: left to the interpreter's exit, gloo's
        # threads die unjoined and the process aborts ("terminate called without an active exception").
        gc.collect()
        torch.distributed.destroy_process_group()


def test_cwtm_over_data_parallel_ranks_is_the_full_batch_objective(tmp_path):
    # Eq. 10 normalises over the whole mini-batch; with DDP each rank holds a shard of it.
    torch.multiprocessing.spawn(_cwtm_on_a_shard, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"{rank}.pt") for rank in (0, 1)]
    student, x, t, y = _cwtm_case()
    loss = get_objective("cwtm")(student(x), t, y, params(temperature=2.0))
    loss.backward()
    torch.testing.assert_close(torch.cat([r["weights"] for r in ranks]), cwtm_weights(t, 2.0))
    # DDP's step is the mean of the ranks' gradients; the mean of their losses is the logged value.
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss.detach())
    for rank in ranks:
        for got, want in zip(rank["grads"], (p.grad for p in student.parameters())):
            torch.testing.assert_close(got, want)


def test_dkpp_keeps_the_argmax_and_permutes_the_rest():
    torch.manual_seed(0)
    probs = F.softmax(torch.randn(64, 10), dim=1)
    first, second = permute_non_argmax(probs), permute_non_argmax(probs)
    rows = torch.arange(64)
    argmax = probs.argmax(dim=1)
    assert torch.equal(first.argmax(dim=1), argmax)
    assert torch.equal(first[rows, argmax], probs[rows, argmax])
    torch.testing.assert_close(first.sort(dim=1).values, probs.sort(dim=1).values)  # same multiset per row
    assert not torch.equal(first, probs) and not torch.equal(first, second)  # shuffled, freshly per call
    moved = (first != probs).any(dim=1).float().mean().item()
    assert moved > 0.9  # per sample: almost every row changes (a row stays put with probability 1/9!)


def test_dkpp_value_and_gradient_use_the_permuted_target():
    torch.manual_seed(1)
    z = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5)
    torch.manual_seed(7)
    loss = get_objective("dkpp")(z, t, torch.zeros(4, dtype=torch.long), params())
    torch.manual_seed(7)
    target = permute_non_argmax(F.softmax(t, dim=1))
    assert loss.item() == pytest.approx(-(target * F.log_softmax(z.detach(), dim=1)).sum(dim=1).mean().item(), rel=1e-6)
    loss.backward()
    torch.testing.assert_close(z.grad, (F.softmax(z.detach(), dim=1) - target) / 4)  # paper Eq. 11


def test_ban_gradient_splits_into_ground_truth_and_dark_knowledge_terms():
    """Paper Eq. 7: at the true class the gradient is (q_* − p_*)/b, elsewhere (q_i − p_i)/b; for
    the label loss the true-class entry is (q_* − 1)/b (Eq. 6)."""
    z = Z2.clone().requires_grad_(True)
    get_objective("ban")(z, T2, Y2, params()).backward()
    q, p = F.softmax(Z2, dim=1), F.softmax(T2, dim=1)
    rows = torch.arange(2)
    torch.testing.assert_close(z.grad[rows, Y2], (q[rows, Y2] - p[rows, Y2]) / 2)
    torch.testing.assert_close(z.grad.sum(), torch.tensor(0.0), atol=1e-7, rtol=0)  # both distributions sum to 1
    z.grad = None
    get_objective("ce")(z, None, Y2, params()).backward()
    torch.testing.assert_close(z.grad[rows, Y2], (q[rows, Y2] - 1) / 2)


def test_ban_l_gradient_at_t1():
    z = Z2.clone().requires_grad_(True)
    get_objective("ban+l")(z, T2, Y2, params(teacher_weight=0.5, label_weight=2.0)).backward()
    q, p, y = F.softmax(Z2, dim=1), F.softmax(T2, dim=1), F.one_hot(Y2, 3)
    torch.testing.assert_close(z.grad, (0.5 * (q - p) + 2.0 * (q - y)) / 2)
