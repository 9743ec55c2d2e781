"""Transform presets and SwAV multi-crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import functional as F

from slade.data import (
    ImageTensorDataset,
    MultiCrop,
    RandomShift,
    eval_transform,
    multi_crop,
    train_transform,
)
from slade.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from slade.errors import ConfigError, InvalidArgumentError


def _shifted(array: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``array`` moved down by dy and right by dx, zeros where nothing moved in."""
    out = np.zeros_like(array)
    h, w = array.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = array[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def test_random_shift_is_a_translation_within_two_pixels():
    rng = np.random.default_rng(0)
    array = rng.integers(1, 256, size=(28, 28), dtype=np.uint8)
    image = Image.fromarray(array)
    candidates = {(dy, dx): _shifted(array, dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    torch.manual_seed(0)
    seen = set()
    for _ in range(200):
        out = np.asarray(RandomShift(2)(image))
        matches = [shift for shift, expected in candidates.items() if np.array_equal(out, expected)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == 25
    tensor_out = RandomShift(1)(torch.from_numpy(array)[None])
    assert tensor_out.shape == (1, 28, 28)
    assert RandomShift(0)(image) is image
    with pytest.raises(InvalidArgumentError):
        RandomShift(-1)


def test_grayscale_presets():
    image = Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28))
    out = train_transform("grayscale")(image)
    assert (
        out.shape == (1, 28, 28)
        and out.dtype == torch.float32
        and 0 <= out.min()
        and out.max() <= 1
    )
    evaluated = eval_transform("grayscale")(image)
    assert torch.equal(evaluated[0], torch.from_numpy(np.asarray(image, dtype=np.float32) / 255))
    assert eval_transform("grayscale", size=14)(image).shape == (1, 14, 14)


def test_natural_presets():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8))
    assert train_transform("natural")(image).shape == (3, 224, 224)
    out = eval_transform("natural")(image)
    resized = F.center_crop(F.resize(image, 256), 224)
    expected = (F.to_tensor(resized) - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(
        IMAGENET_STD
    )[:, None, None]
    assert out.shape == (3, 224, 224) and torch.allclose(out, expected, atol=1e-6)
    assert torch.equal(out, eval_transform("natural")(image))
    with pytest.raises(ConfigError, match="grayscale"):
        train_transform("colour")


@pytest.mark.parametrize("style, sizes", [("natural", (224, 96)), ("grayscale", (28, 14))])
def test_multi_crop_views(style, sizes):
    crops = multi_crop(style, n_local=4)
    image = Image.new("RGB" if style == "natural" else "L", (120, 100), 128)
    views = crops(image)
    assert len(views) == 6
    channels = 3 if style == "natural" else 1
    assert [tuple(v.shape) for v in views] == [(channels, sizes[0], sizes[0])] * 2 + [
        (channels, sizes[1], sizes[1])
    ] * 4


def test_multi_crop_collates_one_batch_per_view():
    images = torch.randint(0, 256, (10, 28, 28), dtype=torch.uint8)
    dataset = ImageTensorDataset(
        images, torch.arange(10) % 2, ["a", "b"], transform=multi_crop("grayscale", n_local=3)
    )
    views, labels = next(iter(DataLoader(dataset, batch_size=4)))
    assert [tuple(v.shape) for v in views] == [(4, 1, 28, 28)] * 2 + [(4, 1, 14, 14)] * 3
    assert labels.tolist() == [0, 1, 0, 1]
    with pytest.raises(InvalidArgumentError):
        MultiCrop(lambda x: x, lambda x: x, n_global=1)
