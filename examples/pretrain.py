"""Small DeiT- and PVT-style ViTs trained on the offline datasets (``datasets.py``).

Their checkpoints are committed under ``examples/checkpoints/`` (each under 1 MB) with
``pretrained.json`` (the configuration, epochs, seconds and test top-1 of each), so that the
fidelity table (``benchmarks/accuracy.py``) and the tests start from trained weights and never
retrain. ``load_pretrained(model, dataset)`` gives one back in eval mode. To retrain them all
(about ten minutes on two cores):

    python examples/pretrain.py [--models deit,pvt] [--datasets digits,mnist-5k,animal-mnist]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import datasets  # noqa: E402
from deit_tiny import deit_tiny  # noqa: E402
from pvtv2_b0 import pvtv2_b0  # noqa: E402
from saddc import finetune  # noqa: E402

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
RECORD = CHECKPOINTS / "pretrained.json"
MODELS = ("deit", "pvt")

# Architectures per (model, image size): DeiT-Tiny's and PVTv2-b0's structure, narrowed and
# shortened to train in minutes on a CPU; patches sized so that 8x8 and 28x28 images give
# 16 to 64 tokens.
_DEIT = {"dim": 64, "depth": 4, "heads": 2, "mlp_ratio": 2.0}
_PVT = {"dims": (32, 64), "depths": (2, 2), "heads": (1, 2), "sr_ratios": (2, 1), "mlp_ratios": (4, 4)}
CONFIGS = {
    ("deit", 8): {**_DEIT, "img_size": 8, "patch_size": 2},
    ("deit", 28): {**_DEIT, "img_size": 28, "patch_size": 4},
    ("pvt", 8): {**_PVT, "stem": (3, 1)},
    ("pvt", 28): {**_PVT, "stem": (7, 4)},
}
_FACTORIES = {"deit": deit_tiny, "pvt": pvtv2_b0}
EPOCHS = {"digits": 40, "mnist-5k": 25, "animal-mnist": 25}
LEARNING_RATE = 1e-3
BATCH_SIZE = 64
SEED = 0


def build(model: str, split: datasets.Split) -> nn.Module:
    """The untrained ``model`` ("deit" or "pvt") for ``split``'s images and classes."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r} (choose from: {', '.join(MODELS)})")
    config = CONFIGS[(model, split.image_size)]
    return _FACTORIES[model](in_chans=1, num_classes=split.classes, **config)


def checkpoint_path(model: str, dataset: str) -> Path:
    return CHECKPOINTS / f"{model}-{dataset}.pt"


def load_pretrained(model: str, split: datasets.Split) -> nn.Module:
    """The committed trained ``model`` for ``split``'s dataset, in eval mode."""
    path = checkpoint_path(model, split.name)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {path}: run examples/pretrain.py")
    network = build(model, split)
    network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return network.eval()


def train(network: nn.Module, split: datasets.Split, epochs: int, progress: bool = True) -> None:
    """``saddc.finetune``'s loop from scratch: AdamW with a cosine schedule and cross-entropy on
    the training split, batches drawn with a fixed seed."""
    finetune.finetune(finetune.Reparameterization(network, "original"), torch.from_numpy(split.x_train),
                      torch.from_numpy(split.y_train), epochs, lr=LEARNING_RATE, batch_size=BATCH_SIZE, seed=SEED,
                      progress=progress, desc=f"training on {split.name}")


def test_top1(network: nn.Module, split: datasets.Split) -> float:
    return finetune.top1(finetune.predict(network, torch.from_numpy(split.x_test)), split.y_test)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--datasets", default=",".join(datasets.DATASETS))
    args = parser.parse_args()
    CHECKPOINTS.mkdir(exist_ok=True)
    record = json.loads(RECORD.read_text()) if RECORD.is_file() else {}
    for dataset in args.datasets.split(","):
        split = datasets.load(dataset)
        for model in args.models.split(","):
            torch.manual_seed(SEED)  # each model starts the same whichever were trained before it
            network = build(model, split)
            start = time.perf_counter()
            train(network, split, EPOCHS[dataset])
            seconds = time.perf_counter() - start
            torch.save(network.state_dict(), checkpoint_path(model, dataset))
            accuracy = test_top1(network, split)
            record[f"{model}-{dataset}"] = {
                "config": {k: list(v) if isinstance(v, tuple) else v for k, v in CONFIGS[(model, split.image_size)].items()},
                "parameters": sum(p.numel() for p in network.parameters()),
                "epochs": EPOCHS[dataset], "train_seconds": round(seconds, 1), "test_top1": round(accuracy, 2),
                "train_images": len(split.x_train), "test_images": len(split.x_test),
                "torch": torch.__version__,
            }
            print(f"{model}-{dataset}: test top-1 {accuracy:.2f}% after {EPOCHS[dataset]} epochs ({seconds:.0f} s)")
            RECORD.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
