"""Fashion-MNIST loading from IDX files the test writes itself, and the training transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ascan.classify.config import AugConfig
from ascan.data.datasets import FashionMNIST, fashion_mnist_transform, parse_rand_augment
from ascan.data.fashion_mnist import MEAN, STD, load_fashion_mnist
from ascan.data.idx import IdxFormatError, write_idx
from ascan.errors import UserError


@pytest.mark.parametrize("gz", [True, False])
def test_loader_reads_what_was_written(tmp_path, fake_fashion_mnist, gz):
    arrays = fake_fashion_mnist(tmp_path, gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = load_fashion_mnist(tmp_path, split)
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        np.testing.assert_array_equal(images.numpy(), arrays[prefix][0])
        np.testing.assert_array_equal(labels.numpy(), arrays[prefix][1].astype(np.int64))


def test_idx_header_bytes_are_big_endian(tmp_path):
    """Independent reference: the IDX header layout from the format's definition, byte by byte."""
    write_idx(tmp_path / "x.idx", np.arange(6, dtype=np.uint8).reshape(2, 3))
    raw = (tmp_path / "x.idx").read_bytes()
    assert raw[:4] == bytes([0, 0, 0x08, 2])
    assert raw[4:12] == (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    assert raw[12:] == bytes(range(6))


def test_truncated_file_is_a_format_error(tmp_path, fake_fashion_mnist):
    fake_fashion_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(IdxFormatError, match="expected"):
        load_fashion_mnist(tmp_path, "train")


def test_missing_folder_says_how_to_install(tmp_path):
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nope", "train")


def test_eval_transform_pads_to_32_and_normalizes(tmp_path, fake_fashion_mnist):
    arrays = fake_fashion_mnist(tmp_path)
    dataset = FashionMNIST(tmp_path, "test", fashion_mnist_transform(32, train=False))
    image, label = dataset[3]
    assert image.shape == (1, 32, 32) and label == int(arrays["t10k"][1][3])
    expected = np.full((32, 32), (0.0 - MEAN) / STD, dtype=np.float32)
    expected[2:30, 2:30] = (arrays["t10k"][0][3] / 255.0 - MEAN) / STD
    np.testing.assert_allclose(image[0].numpy(), expected, atol=1e-5)


def test_train_transform_only_translates_and_flips(tmp_path, fake_fashion_mnist):
    """Without RandAugment the augmented image is a shifted/flipped copy of the padded one."""
    fake_fashion_mnist(tmp_path)
    plain = FashionMNIST(tmp_path, "train", fashion_mnist_transform(32, train=False))[0][0][0]
    aug = AugConfig(crop_padding=2, hflip=0.5)
    torch.manual_seed(0)
    dataset = FashionMNIST(tmp_path, "train", fashion_mnist_transform(32, train=True, aug=aug))
    background = (0.0 - MEAN) / STD
    padded = torch.nn.functional.pad(plain, (2, 2, 2, 2), value=background)
    for _ in range(5):
        out = dataset[0][0][0]
        candidates = [padded[dy:dy + 32, dx:dx + 32] for dy in range(5) for dx in range(5)]
        candidates += [c.flip(-1) for c in candidates]
        assert any(torch.allclose(out, c, atol=1e-5) for c in candidates)


def test_rand_augment_spec():
    assert parse_rand_augment("rand-m15-n2") == (2, 15)
    with pytest.raises(UserError, match="unknown part"):
        parse_rand_augment("rand-x3")
    with pytest.raises(UserError, match="0..30"):
        parse_rand_augment("rand-m40-n2")
