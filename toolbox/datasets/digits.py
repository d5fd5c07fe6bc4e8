"""``digits``: scikit-learn's offline 8x8 digits, resized to 3x32x32 with a fixed split, so that every
model and every Tucker rank behaves as on CIFAR; the data set of the demo, the study and the tests.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from toolbox.datasets.on_device import Dataset, on_device

IMAGE_SIZE = 32  # every data set is fed as 3x32x32 images, digits included


DIGITS_TEST_FRACTION = 0.2


DIGITS_SPLIT_SEED = 0


def load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 1797 8x8 digits as CIFAR-shaped uint8 images with a fixed 80/20 split."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    small = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0  # values 0..16
    large = F.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    images = (large.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).numpy()
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(images))
    n_test = int(len(images) * DIGITS_TEST_FRACTION)
    test, train = order[:n_test], order[n_test:]
    labels = digits.target.astype(np.int64)
    return images[train], labels[train], images[test], labels[test]


def digits(device: torch.device | str) -> Dataset:
    """The digits on ``device``, normalised with its training images' statistics."""
    arrays = load_digits()
    pixels = torch.from_numpy(arrays[0]).float()
    return on_device(arrays, pixels.mean(dim=(0, 2, 3)) / 255, pixels.std(dim=(0, 2, 3)) / 255, 10, device)
