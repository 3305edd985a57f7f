"""The offline datasets, the committed pretrained checkpoints, and the fidelity table's script on
a small subset (the full table is benchmarks/accuracy.py's job, not the tests')."""

import importlib.util
import json

import numpy as np
import pytest

import datasets
import pretrain
from conftest import ROOT


@pytest.fixture(scope="module", params=datasets.DATASETS)
def split(request):
    return datasets.load(request.param)


def test_datasets_are_split_and_standardized_the_same_way_every_time(split):
    sizes = {"digits": (1437, 360, 8), "mnist-5k": (4000, 1000, 28), "animal-mnist": (8000, 2000, 28)}[split.name]
    assert (len(split.x_train), len(split.x_test), split.image_size) == sizes
    assert split.x_train.dtype == np.float32 and split.x_train.shape[1] == 1 and split.classes == 10
    assert abs(float(split.x_train.mean())) < 1e-4 and abs(float(split.x_train.std()) - 1) < 1e-4
    # Stratified: every class keeps its share in both halves.
    train_share, test_share = (np.bincount(y, minlength=10) / len(y) for y in (split.y_train, split.y_test))
    assert np.abs(train_share - test_share).max() < 0.01
    again = datasets.load(split.name)
    np.testing.assert_array_equal(again.x_test, split.x_test)
    np.testing.assert_array_equal(again.y_train, split.y_train)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        datasets.load("cifar")
    with pytest.raises(ValueError, match="unknown model 'swin'"):
        pretrain.build("swin", datasets.load("digits"))


@pytest.mark.parametrize("model", pretrain.MODELS)
def test_checkpoints_are_small_and_score_what_their_record_says(model, split):
    record = json.loads(pretrain.RECORD.read_text())[f"{model}-{split.name}"]
    assert pretrain.checkpoint_path(model, split.name).stat().st_size < 1_000_000
    network = pretrain.load_pretrained(model, split)
    assert sum(p.numel() for p in network.parameters()) == record["parameters"]
    # Another CPU may round a borderline logit the other way: one test image's worth of slack.
    assert abs(pretrain.test_top1(network, split) - record["test_top1"]) <= 100 / len(split.x_test) + 0.005
    assert record["test_top1"] > 85.0


def test_fidelity_script_runs_every_column_on_a_subset(tmp_path):
    loader = importlib.util.spec_from_file_location("accuracy", ROOT / "benchmarks" / "accuracy.py")
    accuracy = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(accuracy)
    status = accuracy.main(["--datasets", "digits", "--models", "deit", "--rewrites", "original,moe-0.75",
                            "--epochs", "1", "--finetune-images", "128", "--test-images", "60", "--out", str(tmp_path)])
    assert status == 0
    record = json.loads((tmp_path / "accuracy.json").read_text())
    assert [row["rewrite"] for row in record["rows"]] == ["original", "moe-0.75"]
    for row in record["rows"]:
        assert row["compiled_top1"] == row["finetuned_top1"] and row["prediction_agreement"] == 1.0
        assert row["latency"]["median_us"] > 0 and row["latency"]["repeats"] == accuracy.REPEAT
    moe = record["rows"][1]
    assert moe["kernels_rewritten"] == ["moe"] and 0.5 < moe["shift_token_fraction"] <= 1.0
    table = (tmp_path / "accuracy.md").read_text()
    assert "| moe-0.75 |" in table and (tmp_path / "accuracy.png").stat().st_size > 10_000
    with pytest.raises(SystemExit):
        accuracy.main(["--rewrites", "shift-some", "--out", str(tmp_path)])
