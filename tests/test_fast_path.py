"""The fast path's switches: validated in the spec, each trains, and the numerics-free ones change nothing."""

import fakedata
import pytest
import torch
from conftest import tiny_spec

from banray.catalog.losses import get_objective
from banray.catalog.models import build_model
from banray.spec import DistillSpec, SpecError, parse_spec
from banray.sweep.start import preflight
from banray.training.tasks import bf16_autocast, compute_dtype, make_task, use_channels_last


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    fakedata.write_cifar10(root)
    return root


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.precision", "fp16", "train.precision: 'fp16' is not allowed: input should be 'auto', 'fp32' or 'bf16'"),
        ("train.channels_last", "yes", "train.channels_last: 'yes' is not allowed: input should be 'auto', 'on' or 'off'"),
        ("data.loader_workers", 2, "data.loader_workers: this setting was removed (the training batches are made on "
                                   "the device by tensor ops, with no DataLoader workers); remove it from the spec"),
        ("data.pin_memory", "on", "data.pin_memory: this setting was removed"),
        ("distill.teacher", "offline", "distill.teacher: 'offline' is not allowed: input should be 'online' or 'cached'"),
        ("distill.cache_dtype", "int8", "distill.cache_dtype: 'int8' is not allowed: input should be 'float16' or 'float32'"),
        ("distill.cache_top_k", 0, "distill.cache_top_k: 0 is not allowed: input should be greater than or equal to 1"),
        ("distill.cache_top_k", 5, "distill.cache_top_k: 5 is not allowed with distill.teacher 'online': it sets how "
                                   "the teacher-logit cache is stored; set distill.teacher: cached or remove it"),
    ],
)
def test_bad_fast_path_values_get_one_line_each(key, value, message):
    with pytest.raises(SpecError) as caught:
        parse_spec(tiny_spec(**{key: value}))
    assert len(caught.value.lines) == 1 and caught.value.lines[0].startswith(f"spec: {message}")


def test_cached_teacher_is_refused_for_language_models():
    with pytest.raises(SpecError, match="distill.teacher: 'cached' is not allowed for a language model dataset"):
        parse_spec(tiny_spec(data={"dataset": "ptb"}, model={"arch": "lstm_lm"}, search={"metric": "val_nll"},
                             distill={"teacher": "cached"}))


def test_a_top_k_of_at_least_the_classes_is_refused_before_anything_runs():
    spec = parse_spec(tiny_spec(distill={"objective": "ban", "teacher": "cached", "cache_top_k": 4}))
    with pytest.raises(SpecError, match=r"^distill.cache_top_k: 4 is not allowed: synthetic has 4 classes; give fewer"):
        preflight(spec)
    preflight(parse_spec(tiny_spec(distill={"objective": "ban", "teacher": "cached", "cache_top_k": 3})))


def test_only_switches_that_change_the_numbers_are_in_the_spec_hash():
    base = parse_spec(tiny_spec()).spec_hash()
    for same in ({"train.checkpoint_every_s": 60},):
        assert parse_spec(tiny_spec(**same)).spec_hash() == base
    for different in ({"train.precision": "bf16"}, {"train.channels_last": "on"}, {"train.compile": True},
                      {"distill.teacher": "cached"}, {"distill.cache_dtype": "float32"}):
        assert parse_spec(tiny_spec(**different)).spec_hash() != base
    cached = {"distill.teacher": "cached"}
    assert parse_spec(tiny_spec(**cached, **{"distill.cache_top_k": 2})).spec_hash() != parse_spec(
        tiny_spec(**cached)).spec_hash()


def test_auto_means_the_fast_path_on_cuda_only():
    spec = parse_spec(tiny_spec())
    assert not bf16_autocast(spec.train, "cpu") and not use_channels_last(spec.train, "cpu")
    assert bf16_autocast(spec.train, "cuda") and use_channels_last(spec.train, "cuda")
    assert compute_dtype(spec.train, "cpu") == torch.float32 and compute_dtype(spec.train, "cuda") == torch.bfloat16


def train(spec, epochs=2):
    task = make_task(spec.data, spec.train, seed=5)
    torch.manual_seed(0)
    model = build_model(spec.model.arch, num_classes=task.num_classes, input_shape=task.input_shape, **spec.model.kwargs)
    if use_channels_last(spec.train, "cpu"):
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def step(loss):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    losses = [task.train_epoch(model, None, get_objective("ce"), DistillSpec().loss_params(), step, torch.device("cpu"), e)["ce"]
              for e in range(1, epochs + 1)]
    return model, losses


def cifar(root, **overrides):
    return parse_spec(tiny_spec(data={"dataset": "cifar10", "root": str(root)},
                                model={"arch": "wrn", "kwargs": {"depth": 10, "widen_factor": 1}}, **overrides))


def test_bf16_autocast_trains_on_cpu(cifar_root):
    _, fp32 = train(cifar(cifar_root))
    _, bf16 = train(cifar(cifar_root, **{"train.precision": "bf16"}))
    assert all(torch.isfinite(torch.tensor(bf16))) and bf16 != fp32
    assert bf16 == pytest.approx(fp32, rel=0.05)


def test_channels_last_keeps_the_results_close(cifar_root):
    plain, plain_losses = train(cifar(cifar_root))
    last, last_losses = train(cifar(cifar_root, **{"train.channels_last": "on"}))
    # Other kernels sum in another order: float rounding, compounded by the epochs' steps (1.2e-4 of the
    # second epoch's loss on one CPU model, under 1e-4 on another).
    assert last_losses == pytest.approx(plain_losses, rel=1e-3)
    for name, weight in plain.state_dict().items():
        torch.testing.assert_close(last.state_dict()[name], weight, rtol=1e-2, atol=1e-2)  # float rounding only


class InputRecorder(torch.nn.Module):
    """A model that records the dtype and layout of the inputs it is given."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, set()

    def forward(self, x):
        self.seen.add((x.dtype, x.is_contiguous(memory_format=torch.channels_last)))
        return self.model(x)


def test_the_student_gets_its_inputs_in_its_compute_dtype_and_layout(cifar_root):
    spec = cifar(cifar_root, **{"train.precision": "bf16", "train.channels_last": "on"})
    task = make_task(spec.data, spec.train, seed=5)
    model = InputRecorder(build_model("wrn", num_classes=10, input_shape=(3, 32, 32), depth=10, widen_factor=1)
                          .to(memory_format=torch.channels_last))
    task.train_epoch(model, None, get_objective("ce"), DistillSpec().loss_params(), lambda loss: loss.backward(),
                     torch.device("cpu"), 1)
    assert model.seen == {(torch.bfloat16, True)}
