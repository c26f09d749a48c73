"""Data-parallel trials: each rank's shard of the training data is ordered by the trial's seed."""

import torch
from conftest import tiny_spec

from banray.spec import parse_spec
from banray.training import tasks
from banray.training.tasks import make_task


def epoch_order(seed: int, rank: int, epoch: int, world_size: int = 2) -> list[int]:
    spec = parse_spec(tiny_spec())
    task = make_task(spec.data, spec.train, seed=seed, rank=rank, world_size=world_size)
    return [i for positions in task.batches(epoch, "cpu") for i in positions.tolist()]


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


def test_ranks_deal_the_single_worker_order_between_them():
    single = epoch_order(seed=3, rank=0, epoch=2, world_size=1)
    assert single == tasks.epoch_order(3, 2, len(single)).tolist()
    # DistributedSampler's permutation: a generator seeded shuffle_seed(seed, epoch), nothing drawn before it.
    assert single == torch.randperm(len(single), generator=torch.Generator().manual_seed(3 * 100_003 + 2)).tolist()
    for world_size in (2, 3):
        shards = [epoch_order(seed=3, rank=rank, epoch=2, world_size=world_size) for rank in range(world_size)]
        dealt = [shards[k % world_size][k // world_size] for k in range(len(single))]
        assert dealt == single  # rank r takes positions r, r + world_size, ... of the one seeded order


def test_a_shard_that_does_not_divide_evenly_repeats_the_order_s_start():
    order = torch.arange(10)
    shards = [tasks.rank_shard(order, rank, 4) for rank in range(4)]
    assert [len(s) for s in shards] == [3, 3, 3, 3]
    assert sorted(torch.cat(shards).tolist()) == sorted(list(range(10)) + [0, 1])

