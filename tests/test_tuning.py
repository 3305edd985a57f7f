"""saddc tune (MetaSchedule on this machine, records kept only where they beat the default
schedule), compile --db (records applied by workload, untuned kernels named) and the database
saddc ships for this CPU (applied without being asked)."""

import json
from pathlib import Path

import pytest
import torch

from conftest import ort_outputs, random_input, relative_error, run_saddc
from model_zoo import IMAGE, build
from saddc.cuda import gpu_visible
from saddc.frontends.torch_export import export_onnx


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tune") / "deit.onnx"
    return export_onnx(build("deit-own-fused"), torch.from_numpy(random_input(IMAGE)), path, "legacy", 17)


@pytest.fixture(scope="module")
def database(model, tmp_path_factory):
    """Two trials on the layernorm kernel, kept even when slower, so compile has a record to apply."""
    directory = tmp_path_factory.mktemp("tune") / "db"
    result = run_saddc("tune", model, "--db", directory, "--trials", "2", "--kernels", "layer_norm", "--keep-slower")
    assert result.returncode == 0, result.stderr
    return directory, result.stdout


def test_tune_times_default_and_tuned_schedules_and_writes_the_database(database):
    directory, stdout = database
    (row,) = [line.split() for line in stdout.splitlines() if line.startswith("layer_norm")]
    name, calls, default_us, tuned_us, trials, kept = row
    # two blocks of two layernorms, and the final one
    assert int(calls) == 5 and float(default_us) > 0 and float(tuned_us) > 0 and int(trials) == 2 and kept == "tuned"
    assert "1 of 1 records kept" in stdout
    records = (directory / "database_tuning_record.json").read_text().splitlines()
    assert len(records) == 1 and (directory / "database_workload.json").stat().st_size > 0


def test_compile_applies_the_database_and_names_untuned_kernels(model, database, tmp_path):
    directory, _ = database
    output = tmp_path / "tuned.so"
    result = run_saddc("compile", model, "--db", directory, "-o", output)
    assert result.returncode == 0, result.stderr
    assert "tuned kernels:     1 of" in result.stdout and "no tuned record" in result.stdout
    manifest = json.loads(output.with_suffix(".json").read_text())
    assert manifest["tuning"]["tuned"] == ["layer_norm"] and "layer_norm" not in manifest["tuning"]["untuned"]
    assert len(manifest["tuning"]["untuned"]) >= 5
    assert manifest["rewrites"] == []

    import saddc  # pylint: disable=import-outside-toplevel

    x = random_input(IMAGE, seed=3)
    (expected,) = ort_outputs(model, {"x": x})
    (actual,) = saddc.load(output)(x)
    assert relative_error(actual, expected) <= 1e-4


def test_tune_merges_into_an_existing_database(model, database, tmp_path):
    directory, _ = database
    copy = tmp_path / "db"
    copy.mkdir()
    for name in ("database_workload.json", "database_tuning_record.json"):
        (copy / name).write_bytes((directory / name).read_bytes())
    result = run_saddc("tune", model, "--db", copy, "--trials", "1", "--kernels", "fast_softmax", "--keep-slower")
    assert result.returncode == 0, result.stderr
    assert len((copy / "database_tuning_record.json").read_text().splitlines()) == 2


@pytest.mark.parametrize("args,message", [
    (["compile", "{model}", "--db", "{tmp}/missing", "-o", "{tmp}/m.so"], "not a tuning database"),
    (["tune", "{model}", "--db", "{tmp}/db", "--trials", "0"], "--trials must be at least 1"),
    (["tune", "{model}", "--db", "{tmp}/db", "--kernels", "no_such_kernel"], "no kernels to tune match 'no_such_kernel'"),
    pytest.param(["tune", "{model}", "--db", "{tmp}/db", "--target", "cuda"], "this machine has none",
                 marks=pytest.mark.skipif(gpu_visible(), reason="needs a machine without a GPU")),
])
def test_bad_tuning_input_is_one_line_and_writes_nothing(model, tmp_path, args, message):
    result = run_saddc(*[arg.format(model=model, tmp=tmp_path) for arg in args])
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("saddc: error:")]
    assert message in line and "Traceback" not in result.stderr
    assert not (tmp_path / "m.so").exists() and not list(tmp_path.glob("db/*.json"))


def test_only_a_shipped_database_with_records_is_applied(monkeypatch, tmp_path):
    from saddc import tuning  # pylint: disable=import-outside-toplevel
    from saddc.target import parse_target  # pylint: disable=import-outside-toplevel

    monkeypatch.setattr(tuning, "SHIPPED", tmp_path)
    target = parse_target("llvm", "x86-64")
    assert tuning.shipped_database(target) is None
    database = tmp_path / "llvm-x86-64"
    database.mkdir()
    (database / tuning.WORKLOAD_FILE).write_text("")
    (database / tuning.RECORD_FILE).write_text("")
    assert tuning.shipped_database(target) is None
    (database / tuning.RECORD_FILE).write_text("[0, [[], [], 0]]\n")
    assert tuning.shipped_database(target) == database


def test_shipped_database_schedules_the_example_model_at_batch_one(tmp_path):
    """saddc ships MetaSchedule records for this CPU (benchmarks/tune_examples.py): a compile of
    DeiT-Tiny exported with batch 1 applies them without being asked, says so, and still
    matches ONNX Runtime."""
    import sys  # pylint: disable=import-outside-toplevel

    from saddc.target import parse_target  # pylint: disable=import-outside-toplevel
    from saddc.tuning import shipped_database  # pylint: disable=import-outside-toplevel

    shipped = shipped_database(parse_target("llvm"))
    if shipped is None:
        pytest.skip("saddc ships no tuning database for this CPU")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from tune_examples import export_batch_one  # pylint: disable=import-outside-toplevel

    x = random_input((1, 3, 224, 224))
    model = export_batch_one("deit_tiny", tmp_path / "deit.onnx")
    output = tmp_path / "deit.so"
    result = run_saddc("compile", model, "-o", output)
    assert result.returncode == 0, result.stderr
    assert f"from {shipped}" in result.stdout
    tuned = json.loads(output.with_suffix(".json").read_text())["tuning"]["tuned"]
    assert "fast_softmax" in tuned, tuned

    import saddc  # pylint: disable=import-outside-toplevel

    (expected,) = ort_outputs(model, {"x": x})
    (actual,) = saddc.load(output)(x)
    assert relative_error(actual, expected) <= 1e-4


def test_table_shows_sub_microsecond_times_and_aligns_long_names():
    """A serial schedule of a tiny kernel runs in hundredths of a microsecond (it printed as
    0.0); a fused kernel's name can pass the name column's width (it pushed its row out)."""
    from saddc.tuning import TunedKernel, table  # pylint: disable=import-outside-toplevel

    long_name = "fused_matmul5_add4_divide_fast_erf_add5_multiply1_multiply2"
    header, *rows = table([TunedKernel(long_name, 2, 3.71, 0.0312, 8, False),
                           TunedKernel("take3", 1, 1.8, 0.031, 1, True)])
    assert rows[0].split()[3] == "0.031" and rows[1].split()[2:4] == ["1.8", "0.031"]
    assert {len(line) - len(line.split()[-1]) for line in rows} == {header.index("kept")}
