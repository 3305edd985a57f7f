"""The kernel-latency gate (benchmarks/latency_gate.py, run by .ci/run): it passes on this tree
against the committed baseline, and fails when a real slowdown is injected (saddc's CPU matmul
rule switched off, so the matmuls run as TVM legalizes them, unscheduled)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GATE = ROOT / "benchmarks" / "latency_gate.py"
# The gate's CLI in a fresh process (its thread pool must start with its settings), optionally
# with a schedule rule replaced first.
RUN_GATE = """
import sys
sys.path.insert(0, {benchmarks!r})
sys.argv = ["latency_gate.py", "--cases", "plain", "--repeat", "3"]
if {disable_matmul_rule}:
    from saddc.schedules.cpu_matmul import CPUMatmul
    CPUMatmul.apply = lambda self, func, target, tunable: None
import latency_gate
sys.exit(latency_gate.main())
"""


def run_gate(disable_matmul_rule: bool) -> subprocess.CompletedProcess:
    script = RUN_GATE.format(benchmarks=str(GATE.parent), disable_matmul_rule=disable_matmul_rule)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900, cwd=ROOT)


def test_gate_passes_on_this_tree():
    result = run_gate(disable_matmul_rule=False)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "gate (llvm): pass" in result.stdout and "fused_matmul_add" in result.stdout


def test_gate_fails_on_a_deliberately_bad_schedule():
    result = run_gate(disable_matmul_rule=True)
    assert result.returncode == 1, result.stdout + result.stderr[-2000:]
    regressions = [line for line in result.stdout.splitlines() if line.startswith("REGRESSION")]
    # Every matmul slows down at once, and they are most of the plain module's gated kernels:
    # the run's drift is theirs, beyond the limit of what is divided out.
    assert any(re.match(r"REGRESSION \w+/(fused_)?matmul", line) for line in regressions), result.stdout
    assert "gate (llvm): FAIL" in result.stdout


def gate_module():
    sys.path.insert(0, str(GATE.parent))
    import latency_gate  # pylint: disable=import-outside-toplevel

    return latency_gate


def ratios(**kernels: float) -> dict:
    return {"kind": "llvm", "ratios": {"plain": kernels}}


# A module like the plain DeiT's: three matmuls, two other kernels gated, one too short to.
BASELINE = ratios(matmul=0.5, fused_matmul_add=0.4, fused_matmul_add_add=0.3, softmax=0.1, layer_norm=0.05,
                  take=0.005)


def scaled(factors: dict, default: float = 1.0) -> dict:
    return ratios(**{name: ratio * factors.get(name, default) for name, ratio in BASELINE["ratios"]["plain"].items()})


def test_load_moving_every_kernel_is_divided_out():
    gate = gate_module()
    # Load or another CPU model: every kernel 1.9x against the reference, one 2.85x (1.5x the
    # rest, within tolerance).
    assert gate.regressions(scaled({"softmax": 2.85}, default=1.9), BASELINE, tolerance=1.0) == []
    # One kernel slower than the rest beyond the tolerance fails, drift or not.
    found = gate.regressions(scaled({"softmax": 4.0}, default=1.9), BASELINE, tolerance=1.0)
    assert [line.split(":")[0] for line in found] == ["plain/softmax"]


def test_most_kernels_slowing_down_together_fail_the_run():
    gate = gate_module()
    slowed = {"matmul": 10.0, "fused_matmul_add": 12.0, "fused_matmul_add_add": 9.0}
    found = gate.regressions(scaled(slowed), BASELINE, tolerance=1.0)
    assert found[0].startswith("run: drift 9.00")
    assert sorted(line.split(":")[0] for line in found[1:]) == sorted(f"plain/{name}" for name in slowed)


def test_most_kernels_speeding_up_leave_the_rest_unjudged_by_it():
    gate = gate_module()
    faster = {"matmul": 0.1, "fused_matmul_add": 0.1, "fused_matmul_add_add": 0.1}
    assert gate.regressions(scaled(faster), BASELINE, tolerance=1.0) == []
    # A kernel too short to gate is listed, never failed, however it moved.
    assert gate.regressions(scaled({"take": 3.0}), BASELINE, tolerance=1.0) == []


def test_a_device_model_with_its_own_baseline_is_checked_against_it(tmp_path, monkeypatch):
    from saddc.target import parse_target  # pylint: disable=import-outside-toplevel

    gate = gate_module()
    monkeypatch.setattr(gate, "RESULTS", tmp_path)
    own = tmp_path / f"latency_gate_llvm-{parse_target('llvm').arch}_baseline.json"
    assert gate.baseline_for("llvm") == tmp_path / "latency_gate_llvm_baseline.json"
    assert gate.baseline_for("llvm", update=True) == own
    own.write_text("{}")
    assert gate.baseline_for("llvm") == own


def test_cuda_reference_kernel_builds_without_a_gpu():
    """The CUDA gate's yardstick (timed where a GPU is visible) compiles here to a fatbin."""
    from saddc.target import parse_target  # pylint: disable=import-outside-toplevel

    library = gate_module().reference_library(parse_target("cuda"))
    assert any(module.kind == "cuda" for module in library.mod.imports)
