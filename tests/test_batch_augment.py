"""The batched Fashion-MNIST augmentation against torchvision's per-sample transforms (the reference)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.transforms import v2

from ascan.classify.config import AugConfig, DataConfig
from ascan.data.batch_augment import BatchAugment
from ascan.data.datasets import FashionMNIST, build_dataset, fashion_mnist_transform
from ascan.data.fashion_mnist import MEAN, STD


def _images(n: int, side: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 256, (n, 1, side, side), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _candidates(prepared: torch.Tensor, pad: int) -> torch.Tensor:
    """Every output torchvision's RandomCrop(padding=pad) + flip can give for one prepared image: [K, C, S, S]."""
    side = prepared.shape[-1]
    padded = v2.functional.pad(prepared, [pad])
    crops = [v2.functional.crop(padded, dy, dx, side, side) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    crops += [c.flip(-1) for c in crops]
    return (torch.stack(crops).float() / 255 - MEAN) / STD


@pytest.mark.parametrize("image_size", [32, 48])
def test_eval_batches_equal_the_per_sample_transform(image_size):
    images = _images(6)
    batched = BatchAugment(image_size, 32, MEAN, STD)
    out = batched(batched.prepare(images))
    reference = torch.stack([fashion_mnist_transform(image_size, train=False)(image) for image in images])
    assert out.shape == (6, 1, image_size, image_size)
    torch.testing.assert_close(out, reference, atol=1e-6, rtol=0)


@settings(max_examples=15, deadline=None)
@given(pad=st.integers(0, 4), batch=st.integers(1, 9), hflip=st.sampled_from([0.0, 0.5, 1.0]),
       seed=st.integers(0, 2**16))
def test_every_augmented_image_is_a_crop_or_flip_torchvision_could_give(pad, batch, hflip, seed):
    images = _images(batch, seed=seed)
    augment = BatchAugment(32, 32, MEAN, STD, crop_padding=pad, hflip=hflip)
    prepared = augment.prepare(images)
    torch.manual_seed(seed)
    out = augment(prepared)
    assert out.shape == (batch, 1, 32, 32) and out.dtype == torch.float32
    for image, result in zip(prepared, out, strict=True):
        candidates = _candidates(image, pad)
        if hflip == 0.0:
            candidates = candidates[: len(candidates) // 2]
        elif hflip == 1.0:
            candidates = candidates[len(candidates) // 2:]
        assert (candidates - result).abs().amax(dim=(1, 2, 3)).min() < 1e-6


def _which_candidate(outputs: torch.Tensor, candidates: torch.Tensor) -> np.ndarray:
    distance = (outputs[:, None] - candidates[None]).abs().flatten(2).amax(-1)  # [N, K]
    return distance.argmin(1).numpy()


def test_crop_and_flip_frequencies_match_torchvision():
    """Same distribution over the 50 (offset, flip) outcomes as the per-sample transform: both near uniform."""
    pad, draws = 2, 5000
    image = _images(1, seed=3)
    augment = BatchAugment(32, 32, MEAN, STD, crop_padding=pad, hflip=0.5)
    prepared = augment.prepare(image)
    candidates = _candidates(prepared[0], pad)
    torch.manual_seed(0)
    batched = _which_candidate(augment(prepared.expand(draws, -1, -1, -1)), candidates)
    per_sample_transform = fashion_mnist_transform(32, train=True, aug=AugConfig(crop_padding=pad, hflip=0.5))
    torch.manual_seed(1)
    per_sample = _which_candidate(torch.stack([per_sample_transform(image[0]) for _ in range(draws)]), candidates)
    outcomes = len(candidates)
    expected = draws / outcomes
    for counts in (np.bincount(batched, minlength=outcomes), np.bincount(per_sample, minlength=outcomes)):
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < 100, chi2  # 49 degrees of freedom: p < 1e-4 beyond 100


def test_random_erasing_rate_and_fill():
    """timm's RandomErasing on batches: about p of the images get one zero-filled rectangle."""
    images = _images(2000, seed=5)
    augment = BatchAugment(32, 32, MEAN, STD, random_erasing=0.25)
    plain = BatchAugment(32, 32, MEAN, STD)
    prepared = augment.prepare(images)
    random.seed(0)
    out, reference = augment(prepared), plain(prepared)
    changed = (out != reference).flatten(1).any(1)
    assert 0.21 < changed.float().mean().item() < 0.29
    for index in torch.nonzero(changed)[:20, 0]:
        ys, xs = torch.nonzero(out[index, 0] != reference[index, 0], as_tuple=True)
        box = out[index, 0, ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        assert torch.all(box == 0)  # one rectangle, filled with zeros (the normalized mean)


def test_seeded_batches_reproduce():
    images = _images(64, seed=7)
    augment = BatchAugment(32, 32, MEAN, STD, crop_padding=2, hflip=0.5, random_erasing=0.5)
    prepared = augment.prepare(images)
    outs = []
    for _ in range(2):
        torch.manual_seed(11)
        random.seed(11)
        outs.append(augment(prepared))
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)


def test_dataloader_fetches_whole_batches(tmp_path, fake_fashion_mnist):
    """The DataLoader goes through __getitems__: one augmentation call per batch, same result as calling it."""
    fake_fashion_mnist(tmp_path)
    dataset, _ = build_dataset(DataConfig(root=str(tmp_path)), AugConfig(crop_padding=2, hflip=0.5), train=True)
    assert isinstance(dataset, FashionMNIST) and dataset.batch_transform is not None
    calls = []
    original = dataset.batch_transform.__call__
    dataset.batch_transform = lambda batch: calls.append(len(batch)) or original(batch)
    sampler = [[0, 1, 2, 3], [4, 5, 6, 7]]
    torch.manual_seed(0)
    # Its own generator, as the engine's loader: a loader otherwise draws its seed from the global stream.
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, generator=torch.Generator().manual_seed(0))
    loaded = list(loader)
    assert calls == [4, 4]
    torch.manual_seed(0)
    direct = [torch.stack([image for image, _ in dataset.__getitems__(batch)]) for batch in sampler]
    for (images, labels), expected, batch in zip(loaded, direct, sampler, strict=True):
        torch.testing.assert_close(images, expected, atol=0, rtol=0)
        assert labels.tolist() == dataset.labels[batch].tolist()


def test_rand_augment_keeps_the_per_sample_path(tmp_path, fake_fashion_mnist):
    fake_fashion_mnist(tmp_path)
    dataset, _ = build_dataset(DataConfig(root=str(tmp_path)), AugConfig(rand_augment="rand-m9-n2"), train=True)
    assert dataset.batch_transform is None and dataset.transform is not None


def test_bad_settings_name_the_argument():
    with pytest.raises(ValueError, match="crop_padding"):
        BatchAugment(32, 32, MEAN, STD, crop_padding=-1)
    with pytest.raises(ValueError, match="hflip"):
        BatchAugment(32, 32, MEAN, STD, hflip=1.5)
    with pytest.raises(ValueError, match="not both"):
        FashionMNIST(None, "train", transform=lambda x: x, batch_transform=BatchAugment(32, 32, MEAN, STD))
