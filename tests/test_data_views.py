"""Training views made a batch at once on the device: each a pure function of (data seed, epoch, sample index),
equal bit for bit to the per-sample reference, the same whatever batch the sample is in."""

import fakedata
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from banray.catalog.data import CropFlip, load_splits, mix32, view_draws

PADDING = 4
SPAN = 2 * PADDING + 1


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    fakedata.write_cifar10(root)
    return load_splits("cifar10", str(root), 0.2, seed=11)


def reference(splits, positions, epoch):
    return torch.stack([splits.augment.reference(splits.train.inputs[p], splits.normalise, splits.seed, epoch,
                                                 int(splits.train.indices[p])) for p in positions.tolist()])


def draws_of(splits, epoch):
    top, left, flip = view_draws(splits.seed, epoch, splits.train.indices, SPAN)
    return top, left, flip


def test_the_hash_in_tensors_is_the_hash_in_python_integers():
    values = torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 123456789], dtype=torch.int64)
    assert mix32(values).tolist() == [mix32(v) for v in values.tolist()]
    for seed in (0, 7, 2**32 - 1, 2**40 + 3):
        index = torch.arange(0, 2**32, 2**32 // 97, dtype=torch.int64)
        batched = view_draws(seed, 5, index, SPAN)
        for i, sample in enumerate(index.tolist()):
            assert tuple(int(d[i]) for d in batched) == view_draws(seed, 5, sample, SPAN)


def test_the_draws_cover_every_offset_and_both_flips_evenly():
    top, left, flip = view_draws(3, 1, torch.arange(90_000), SPAN)
    for offsets in (top, left):
        counts = torch.bincount(offsets, minlength=SPAN)
        assert len(counts) == SPAN and (counts - 10_000).abs().max() < 500
    assert abs(flip.float().mean().item() - 0.5) < 0.01


def test_batched_views_equal_the_reference_bit_for_bit(splits):
    for epoch in (1, 2, 7):
        positions = torch.arange(len(splits.train))
        assert torch.equal(splits.train_views(positions, epoch), reference(splits, positions, epoch))


def test_edge_offsets_and_both_flips_equal_the_reference(splits):
    epoch = 3
    top, left, flip = draws_of(splits, epoch)
    wanted = [(top == 0) & (flip == 0), (top == 2 * PADDING) & (flip == 1), (left == 0) & (flip == 1),
              (left == 2 * PADDING) & (flip == 0)]
    positions = torch.stack([mask.nonzero()[0, 0] for mask in wanted])  # one sample of each edge case
    assert torch.equal(splits.train_views(positions, epoch), reference(splits, positions, epoch))


def test_a_view_is_the_same_in_any_batch(splits):
    positions = torch.arange(len(splits.train))
    whole = splits.train_views(positions, 4)
    shuffled = torch.randperm(len(positions), generator=torch.Generator().manual_seed(0))
    assert torch.equal(splits.train_views(shuffled, 4), whole[shuffled])
    pieces = torch.cat([splits.train_views(p, 4) for p in positions.split(7)])
    assert torch.equal(pieces, whole)
    assert not torch.equal(splits.train_views(positions, 5), whole)  # another epoch, other views


def test_a_view_without_offset_or_flip_is_the_image_itself(splits):
    positions = torch.arange(20)
    plain = splits.inputs(splits.train, positions)
    views = splits.train_views(positions, 1)
    top, left, flip = (d[:20] for d in draws_of(splits, 1))
    inside = (top == PADDING) & (left == PADDING) & (flip == 0)  # no offset, no flip: the image itself
    assert torch.equal(views[inside], plain[inside]) and not torch.equal(views, plain)


def test_unaugmented_inputs_are_torchvision_s_tensor_and_normalisation(splits):
    transform = T.Compose([T.ToTensor(), T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))])
    images = splits.test.inputs[:10]
    expected = torch.stack([transform(Image.fromarray(np.ascontiguousarray(i.permute(1, 2, 0).numpy())))
                            for i in images])
    assert torch.equal(splits.inputs(splits.test, slice(0, 10)), expected)
    assert torch.equal(splits.inputs(splits.test, slice(0, 10), torch.bfloat16), expected.bfloat16())


def test_the_policy_names_the_hash():
    assert CropFlip(4).policy == "crop-pad4-reflect+hflip/lowbias32-v1"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_views_on_cuda_equal_views_on_cpu(splits):
    positions = torch.arange(len(splits.train))
    on_cuda = splits.on("cuda").train_views(positions.cuda(), 2)
    assert torch.equal(on_cuda.cpu(), splits.train_views(positions, 2))
