import math

import pytest
import torch
import torch.nn.functional as F

from banray.losses import OBJECTIVES, get_objective

# One sample, three classes: small enough to compute every term by hand.
Z = torch.tensor([[1.0, 2.0, 0.5]])  # student logits
T = torch.tensor([[2.0, 0.0, 1.0]])  # teacher logits
Y = torch.tensor([1])


def softmax(xs):
    exps = [math.exp(x) for x in xs]
    return [e / sum(exps) for e in exps]


def test_registry_lists_objectives_and_rejects_unknown():
    assert {"ce", "ban", "kd"} <= set(OBJECTIVES.names())
    with pytest.raises(KeyError, match="unknown objective 'bann'; allowed: ban, ce, kd"):
        get_objective("bann")


def test_ce_is_label_cross_entropy():
    q = softmax([1.0, 2.0, 0.5])
    loss = get_objective("ce")(Z, None, Y, alpha=0.5, temperature=1.0)
    assert loss.item() == pytest.approx(-math.log(q[1]), rel=1e-6)


def test_ban_is_teacher_cross_entropy_at_t1():
    p, q = softmax([2.0, 0.0, 1.0]), softmax([1.0, 2.0, 0.5])
    expected = -sum(pi * math.log(qi) for pi, qi in zip(p, q))
    loss = get_objective("ban")(Z, T, Y, alpha=0.3, temperature=1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)  # ≈ 1.8349, labels and α play no part


def test_ban_at_temperature_scales_by_t_squared():
    temperature = 2.0
    p, q = softmax([1.0, 0.0, 0.5]), softmax([0.5, 1.0, 0.25])
    expected = -sum(pi * math.log(qi) for pi, qi in zip(p, q)) * temperature**2
    loss = get_objective("ban")(Z, T, Y, alpha=0.5, temperature=temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_ban_gradient_is_q_minus_p_over_batch():
    torch.manual_seed(0)
    batch = 5
    student = torch.randn(batch, 7, requires_grad=True)
    teacher = torch.randn(batch, 7)
    get_objective("ban")(student, teacher, torch.zeros(batch, dtype=torch.long), alpha=0.5, temperature=1.0).backward()
    expected = (F.softmax(student.detach(), dim=1) - F.softmax(teacher, dim=1)) / batch
    torch.testing.assert_close(student.grad, expected)


def test_kd_matches_hand_computed_value_with_alpha_on_teacher_term():
    alpha, temperature = 0.7, 2.0
    p, q = softmax([1.0, 0.0, 0.5]), softmax([0.5, 1.0, 0.25])
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    ce = -math.log(softmax([1.0, 2.0, 0.5])[1])
    expected = alpha * temperature**2 * kl + (1 - alpha) * ce
    objective = get_objective("kd")
    assert objective(Z, T, Y, alpha=alpha, temperature=temperature).item() == pytest.approx(expected, rel=1e-6)
    terms = objective.terms(Z, T, Y, alpha=alpha, temperature=temperature)
    assert terms["kd"].item() == pytest.approx(alpha * temperature**2 * kl, rel=1e-6)
    assert terms["ce"].item() == pytest.approx((1 - alpha) * ce, rel=1e-6)


def test_kd_extremes_of_alpha():
    kd = get_objective("kd")
    assert kd(Z, T, Y, alpha=0.0, temperature=3.0).item() == pytest.approx(
        get_objective("ce")(Z, None, Y, alpha=0.0, temperature=1.0).item()
    )
    # α = 1 at T = 1: KL(p‖q) = CE(p, q) − H(p), i.e. BAN minus the teacher's entropy.
    p = F.softmax(T, dim=1)
    entropy = -(p * p.log()).sum().item()
    assert kd(Z, T, Y, alpha=1.0, temperature=1.0).item() == pytest.approx(
        get_objective("ban")(Z, T, Y, alpha=1.0, temperature=1.0).item() - entropy, rel=1e-6
    )


def test_kl_is_averaged_over_the_batch_not_the_classes():
    batch = torch.cat([Z, Z, Z]), torch.cat([T, T, T]), torch.cat([Y, Y, Y])
    single = get_objective("kd")(Z, T, Y, alpha=1.0, temperature=1.0)
    assert get_objective("kd")(*batch, alpha=1.0, temperature=1.0).item() == pytest.approx(single.item(), rel=1e-6)


def test_teacher_needs_are_declared():
    assert not get_objective("ce").needs_teacher
    assert get_objective("ban").needs_teacher and get_objective("kd").needs_teacher
