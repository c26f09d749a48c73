"""The teacher-logit cache: exact (same student weights as with the online teacher), keyed, safe to build twice."""

import threading

import fakedata
import pytest
import torch
from conftest import tiny_spec
from torch.utils.data import DataLoader

from banray import teacher_cache
from banray.data import load_splits
from banray.losses import get_objective
from banray.models import build_model
from banray.spec import parse_spec
from banray.tasks import make_task

WRN = {"arch": "wrn", "kwargs": {"depth": 10, "widen_factor": 1}}


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    fakedata.write_cifar10(root)
    return root


def cifar_spec(root, **overrides):
    return parse_spec(tiny_spec(data={"dataset": "cifar10", "root": str(root)}, model=WRN, **overrides))


def wrn(seed):
    torch.manual_seed(seed)
    return build_model("wrn", num_classes=10, input_shape=(3, 32, 32), **WRN["kwargs"])


def train_student(task, teacher, epochs=2):
    student = wrn(seed=1)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)

    def step(loss):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    losses = [
        task.train_epoch(student, teacher, get_objective("ban"), {"temperature": 2.0}, step, torch.device("cpu"), e)
        for e in range(1, epochs + 1)
    ]
    return student.state_dict(), losses


def test_a_student_taught_from_the_cache_is_the_one_taught_online(cifar_root, tmp_path):
    spec = cifar_spec(cifar_root)
    task = make_task(spec.data, spec.train, seed=3)
    assert task.splits.augmentation != "none"  # random crops and flips: views differ per epoch
    teacher = wrn(seed=0).eval()
    uri = teacher_cache.ensure(teacher, spec.data, 2, str(tmp_path), dtype="float32", splits=task.splits)
    online, online_losses = train_student(task, teacher)
    cached, cached_losses = train_student(task, teacher_cache.CachedTeacher(uri))
    assert cached_losses == online_losses
    assert all(torch.equal(online[name], cached[name]) for name in online)


def test_float16_cache_holds_the_logits_to_half_precision(tmp_path):
    spec = parse_spec(tiny_spec())
    splits = load_splits("synthetic", "", 0.2, 0)
    torch.manual_seed(0)
    teacher = build_model("cnn", num_classes=4, input_shape=(1, 8, 8), width=8).eval()
    uri = teacher_cache.ensure(teacher, spec.data, epochs=5, root=str(tmp_path), dtype="float16")
    cache = teacher_cache.CachedTeacher(uri)
    table = cache.for_epoch(3)
    assert table.dtype == torch.float16 and table.shape == (len(splits.train), 4)
    with torch.inference_mode():
        exact = torch.cat([teacher(x) for x, _ in DataLoader(splits.train, batch_size=100)])
    torch.testing.assert_close(table.float(), exact, rtol=1e-3, atol=1e-3)
    # No augmentation: one pass serves every epoch.
    assert [p.name for p in sorted((tmp_path / uri.rsplit("/", 1)[1]).glob("*.pt"))] == ["epoch-all.pt"]


def test_the_key_changes_with_teacher_policy_data_seed_and_dtype(cifar_root):
    teacher, other = wrn(seed=0), wrn(seed=1)
    spec = cifar_spec(cifar_root)
    key = teacher_cache.cache_key(teacher, spec.data, "crop-pad4-reflect+hflip", "float16")
    assert key == teacher_cache.cache_key(wrn(seed=0), spec.data, "crop-pad4-reflect+hflip", "float16")
    changed = [
        teacher_cache.cache_key(other, spec.data, "crop-pad4-reflect+hflip", "float16"),
        teacher_cache.cache_key(teacher, spec.data, "none", "float16"),
        teacher_cache.cache_key(teacher, cifar_spec(cifar_root, **{"data.seed": 1}).data, "crop-pad4-reflect+hflip", "float16"),
        teacher_cache.cache_key(teacher, spec.data, "crop-pad4-reflect+hflip", "float32"),
    ]
    assert key not in changed and len(set(changed)) == len(changed)
    # What does not change the numbers does not change the key.
    assert key == teacher_cache.cache_key(
        teacher, cifar_spec(cifar_root, **{"data.loader_workers": 2}).data, "crop-pad4-reflect+hflip", "float16"
    )


def test_concurrent_builders_build_once_and_agree(tmp_path, monkeypatch):
    spec = parse_spec(tiny_spec())
    torch.manual_seed(0)
    teacher = build_model("cnn", num_classes=4, input_shape=(1, 8, 8), width=8).eval()
    builds = []
    real = teacher_cache._teacher_logits

    def counting(*args, **kwargs):
        builds.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(teacher_cache, "_teacher_logits", counting)
    uris = []
    threads = [
        threading.Thread(target=lambda: uris.append(teacher_cache.ensure(teacher, spec.data, 3, str(tmp_path))))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(uris)) == 1 and len(uris) == 4
    assert len(builds) == 1  # the first builder wins; the others wait and reuse its files
    assert teacher_cache.CachedTeacher(uris[0]).for_epoch(1).shape == (384, 4)  # the training split of 480
    assert not [p for p in (tmp_path / uris[0].rsplit("/", 1)[1]).iterdir() if p.name.startswith(".epoch")]


def test_augmentation_depends_only_on_data_seed_epoch_and_sample(cifar_root):
    def views(seed, epoch, workers=0):
        splits = load_splits("cifar10", str(cifar_root), 0.2, seed)
        splits.set_epoch(epoch)
        return torch.cat([x for x, _ in DataLoader(splits.train, batch_size=50, num_workers=workers)])

    first = views(seed=0, epoch=1)
    assert torch.equal(first, views(seed=0, epoch=1, workers=2))  # per sample, not per worker process
    assert not torch.equal(first, views(seed=0, epoch=2))
    splits = load_splits("cifar10", str(cifar_root), 0.2, 0)
    unaugmented = torch.stack([splits.train.dataset.base[i][0] for i in splits.train.indices[:50]])
    assert not torch.equal(first[:50], unaugmented)
