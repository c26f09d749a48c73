"""Data-parallel trials: each rank's shard of the training data is ordered by the trial's seed."""

import ray.train.torch
import torch
from conftest import tiny_spec

from banray.session import TrainSession
from banray.spec import parse_spec
from banray.tasks import make_task


def _keep_sampler(loader, **options):
    """Ray's prepare_data_loader minus the device move: it keeps a DistributedSampler that is there and
    otherwise puts in one seeded 0 (which is what banray must not rely on)."""
    assert options == {}
    return loader


def epoch_order(seed: int, rank: int, epoch: int, world_size: int = 2) -> list[int]:
    spec = parse_spec(tiny_spec())
    task = make_task(spec.data, spec.train, seed=seed, rank=rank, world_size=world_size, prepare_loader=_keep_sampler)
    return [i for _, _, index in task._loader(epoch) for i in index.tolist()]


def test_each_rank_trains_on_its_own_shard_ordered_by_the_trial_seed():
    spec = parse_spec(tiny_spec())
    size = len(make_task(spec.data, spec.train).splits.train)
    shards = [epoch_order(seed=1, rank=rank, epoch=1) for rank in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(size))  # an even split: no padding repeats a sample
    assert not set(shards[0]) & set(shards[1])
    for rank in (0, 1):
        assert epoch_order(seed=2, rank=rank, epoch=1) != shards[rank]  # another trial: another order
        assert epoch_order(seed=1, rank=rank, epoch=2) != shards[rank]  # another epoch: another order
        assert epoch_order(seed=1, rank=rank, epoch=1) == shards[rank]  # a resumed run sees the same


def test_the_single_worker_order_is_unchanged():
    # The seeding the single-worker loader always had: a RandomSampler over a generator seeded per epoch.
    spec = parse_spec(tiny_spec())
    size = len(make_task(spec.data, spec.train).splits.train)
    generator = torch.Generator().manual_seed(3 * 100_003 + 2)
    torch.empty((), dtype=torch.int64).random_(generator=generator)  # the DataLoader's base seed comes first
    assert epoch_order(seed=3, rank=0, epoch=2, world_size=1) == torch.randperm(size, generator=generator).tolist()


def test_ray_train_workers_keep_banray_s_sampler(monkeypatch):
    seen = {}
    monkeypatch.setattr(ray.train.torch, "prepare_data_loader", lambda loader, **options: seen.update(options))
    TrainSession.prepare_loader(object())
    assert seen == {"add_dist_sampler": False}

