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
    # Every matmul slows down at once, so the run's drift (their median shift) absorbs part of
    # it: which matmul crosses the tolerance depends on the mix; that one does is the point.
    assert any(re.match(r"REGRESSION \w+/(fused_)?matmul", line) for line in regressions), result.stdout
    assert "gate (llvm): FAIL" in result.stdout


def test_cuda_reference_kernel_builds_without_a_gpu():
    """The CUDA gate's yardstick (timed where a GPU is visible) compiles here to a fatbin."""
    sys.path.insert(0, str(GATE.parent))
    import latency_gate  # pylint: disable=import-outside-toplevel
    from saddc.target import parse_target  # pylint: disable=import-outside-toplevel

    library = latency_gate.reference_library(parse_target("cuda"))
    assert any(module.kind == "cuda" for module in library.mod.imports)
