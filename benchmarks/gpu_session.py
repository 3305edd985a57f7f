"""Everything a lent GPU machine should run for saddc, prepared here and run there in few calls.

    python benchmarks/gpu_session.py pack                     # here: fill .gpu-kit/ (about 2 minutes)
    python3 benchmarks/gpu_session.py stage                   # there, call 1 (carry .gpu-kit/a)
    python3 benchmarks/gpu_session.py run --out $OUT          # there, call 2 (carry .gpu-kit/b)

Why it is built this way: the GPU machine has no TVM and no network, a call carries at most
64 MiB, and a DeiT-Tiny module holds its 23 MB of weights, so carrying a compiled module per
benchmark variant would take a call each. Instead the kit carries TVM itself (its compiler
library, 248 MB, is 59 MiB as xz: more than one call holds beside the tree, so it travels in
two parts, ``a`` and ``b``) and saddc compiles on the GPU machine, which also lets MetaSchedule
measure there. ``stage`` keeps part ``a`` in ``/tmp`` (the machine stays warm for 30 s after a
call, so call 2 must follow at once); ``run`` assembles TVM and saddc into a private
site-packages with the machine's own python (3.12; numpy, onnx, onnxruntime and torch are
there) and runs the jobs in order, each in its own process with its log, skipping those
that would not finish before ``--deadline`` minutes:

    deploy       a module compiled here for CUDA, run with TVM's runtime alone
                 (``TVM_USE_RUNTIME_LIB=1``), as a user deploys one, against ONNX Runtime
    gpu-tests    ``pytest -m gpu``: compile and run on the GPU, against ONNX Runtime and torch
    bench-deit   ``saddc bench`` of DeiT-Tiny, every CUDA variant, batch 1 and 32, beside torch
                 (eager, torch.compile, fp16)
    gate         the CUDA kernel-latency baseline (``latency_gate.py --targets cuda --update``)
    bench-pvt    the same for PVTv2-b0
    kernels      the shift GEMM, attention and MoE kernel benchmarks for CUDA
    tune         MetaSchedule for sm_90 on DeiT-Tiny at batch 1 (``saddc tune``)

Everything comes back as one archive, ``$OUT/gpu_session.tar.gz``: each job's log, its JSON and
PNG results, and ``session.json`` (each job's exit status and time). Unpack it here and commit
the results under ``benchmarks/results/`` (and the database under ``saddc/tuning_db/``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / ".gpu-kit"
STAGE = Path("/tmp/saddc-gpu-kit")
CARRY_LIMIT = 64 << 20
COMPILER = "libtvm_compiler.so"
# tvm's package without what a compile does not read: the compiler library travels apart, and
# its C++ sources, headers, third-party trees and web runtime stay behind.
TVM_LEFT_BEHIND = ("3rdparty", "src", "include", "web", f"lib/{COMPILER}")
WHEELS = ("apache-tvm-ffi", "xgboost-cpu")
DEPLOY_MODULE = "deploy_cuda.so"


def pack(python: str) -> None:
    """Fill ``.gpu-kit/{a,b}`` for a machine whose python is ``python`` (``3.12``)."""
    # pylint: disable=import-outside-toplevel
    from importlib import metadata

    import tvm

    xz = shutil.which("xz")
    if xz is None:
        raise SystemExit("error: gpu_session pack needs the xz command")
    shutil.rmtree(KIT, ignore_errors=True)
    (KIT / "a").mkdir(parents=True)
    (KIT / "b").mkdir()
    tvm_dir = Path(tvm.__file__).parent
    print(f"compressing {COMPILER} ({(tvm_dir / 'lib' / COMPILER).stat().st_size >> 20} MiB) with xz", file=sys.stderr)
    compressed = subprocess.run([xz, "-6", "-T0", "-c", str(tvm_dir / "lib" / COMPILER)], check=True,
                                capture_output=True).stdout
    half = len(compressed) // 2
    (KIT / "a" / f"{COMPILER}.xz.0").write_bytes(compressed[:half])
    (KIT / "b" / f"{COMPILER}.xz.1").write_bytes(compressed[half:])
    with tarfile.open(KIT / "b" / "tvm.tar.xz", "w:xz") as archive:
        archive.add(tvm_dir, arcname="tvm", filter=lambda info: None if _left_behind(info.name) else info)
    pins = [f"{name}=={metadata.version(name)}" for name in WHEELS]
    print(f"fetching wheels for python {python}: {', '.join(pins)}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", python, "--implementation", "cp",
                    *[arg for tag in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
                                      "manylinux_2_17_x86_64", "manylinux2014_x86_64") for arg in ("--platform", tag)],
                    "--dest", str(KIT / "b"), *pins], check=True)
    _build_deploy_module(KIT / "b")
    tree = _tree_bytes()
    for part in ("a", "b"):
        size = sum(f.stat().st_size for f in (KIT / part).iterdir()) + tree
        print(f".gpu-kit/{part} with the working tree: {size / (1 << 20):.1f} MiB (limit 64)", file=sys.stderr)
        if size > CARRY_LIMIT:
            raise SystemExit(f"error: .gpu-kit/{part} and the tree exceed one call's 64 MiB")


def _left_behind(name: str) -> bool:
    relative = name.split("/", 1)[1] if "/" in name else ""
    return any(relative == path or relative.startswith(path + "/") for path in TVM_LEFT_BEHIND) \
        or "__pycache__" in name


def _build_deploy_module(out: Path) -> None:
    """A small DeiT (two blocks, 32x32 images) compiled here for CUDA, with its input and ONNX
    Runtime's output."""
    # pylint: disable=import-outside-toplevel
    import numpy as np
    import onnxruntime as ort
    import torch

    sys.path.insert(0, str(ROOT / "examples"))
    from deit_tiny import deit_tiny

    import saddc
    from saddc.frontends.torch_export import export_onnx

    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype("float32")
    model = export_onnx(deit_tiny(img_size=32, patch_size=8, depth=2).eval(), torch.from_numpy(x),
                        out / "deploy.onnx", "legacy", 17)
    saddc.compile(model, target="cuda", output=out / DEPLOY_MODULE)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    np.save(out / "deploy_x.npy", x)
    np.save(out / "deploy_y.npy", session.run(None, {session.get_inputs()[0].name: x})[0])
    for leftover in out.glob("deploy.onnx*"):
        leftover.unlink()


def _tree_bytes() -> int:
    """What a call sends besides the carried paths: tracked and untracked, not ignored, files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.split(b"\0")
    return sum((ROOT / name.decode()).stat().st_size for name in listed if name and (ROOT / name.decode()).is_file())


def stage() -> None:
    """Call 1 on the GPU machine: keep part ``a`` where call 2 finds it."""
    STAGE.mkdir(parents=True, exist_ok=True)
    for part in (KIT / "a").iterdir():
        shutil.copy(part, STAGE / part.name)
    print(f"staged {', '.join(p.name for p in (KIT / 'a').iterdir())} in {STAGE}")


def assemble() -> Path:
    """TVM (with its compiler), tvm-ffi, xgboost and saddc in a private site-packages."""
    site = STAGE / "site"
    parts = sorted(STAGE.glob(f"{COMPILER}.xz.*")) + sorted((KIT / "b").glob(f"{COMPILER}.xz.*"))
    if len(parts) != 2:
        raise SystemExit(f"error: found {len(parts)} of the 2 parts of {COMPILER}.xz: run `stage` (carrying "
                         ".gpu-kit/a) just before `run` on the same machine")
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    with tarfile.open(KIT / "b" / "tvm.tar.xz") as archive:
        archive.extractall(site, filter="data")
    library = site / "tvm" / "lib" / COMPILER
    xz = subprocess.Popen(["xz", "-d", "-c"], stdin=subprocess.PIPE, stdout=open(library, "wb"))
    for part in parts:
        xz.stdin.write(part.read_bytes())
    xz.stdin.close()
    if xz.wait() != 0:
        raise SystemExit(f"error: {COMPILER}.xz did not decompress")
    library.chmod(0o755)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(site)]
    subprocess.run([*pip, "--no-build-isolation", *map(str, sorted((KIT / "b").glob("*.whl"))), str(ROOT)], check=True)
    return site


def jobs(out: Path, trials: int) -> list[tuple[str, list[str], dict]]:
    """(name, argv, extra environment) of each job, in the order they run."""
    python = sys.executable
    bench = [python, "-m", "saddc", "bench", "--target", "cuda", "--batch", "1,32", "--out", str(out)]
    kit = KIT / "b"
    deploy = ("import sys, numpy as np, saddc\n"
              f"m = saddc.load(r'{kit / DEPLOY_MODULE}')\n"
              f"y = m(np.load(r'{kit / 'deploy_x.npy'}'))[0]\n"
              f"err = float(np.abs(y - np.load(r'{kit / 'deploy_y.npy'}')).max())\n"
              "print(saddc.__file__, 'deployed module: max abs difference from ONNX Runtime', err)\n"
              "assert 'tvm.relax' not in sys.modules and err < 1e-3\n")
    models = STAGE / "models"
    return [
        ("deploy", [python, "-c", deploy], {"TVM_USE_RUNTIME_LIB": "1"}),
        ("gpu-tests", [python, "-m", "pytest", "-m", "gpu", "-p", "no:logging", "-q", "tests"], {}),
        ("export", [python, __file__, "export", str(models)], {}),
        ("bench-deit", [*bench, str(models / "deit_tiny.onnx"), "--torch", "examples/deit_tiny.py:deit_tiny"], {}),
        ("gate", [python, "benchmarks/latency_gate.py", "--targets", "cuda", "--update",
                  "--baseline", str(out / "latency_gate_cuda_baseline.json")], {}),
        ("bench-pvt", [*bench, str(models / "pvtv2_b0.onnx"), "--torch", "examples/pvtv2_b0.py:pvtv2_b0"], {}),
        ("kernels", ["bash", "-c", " && ".join(f"{python} benchmarks/bench_{name}.py --target cuda --out {out}/{name}_cuda.json"
                                               for name in ("shift_gemm", "attention", "moe"))], {}),
        ("tune", [python, "-m", "saddc", "tune", str(models / "deit_tiny_b1.onnx"), "--target", "cuda",
                  "--trials", str(trials), "--db", str(out / "tuning_db" / "cuda-sm_90")], {}),
    ]


def export(models: Path) -> None:
    """The example models as the CPU benchmarks exported them (seed 0, dynamo, opset 18, symbolic
    batch), and DeiT-Tiny as ``tune_examples.py`` exports it for tuning (batch 1, static shapes)."""
    # pylint: disable=import-outside-toplevel
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))  # tune_examples puts examples/ on the path too
    from tune_examples import MODELS, export_batch_one

    from saddc.frontends.torch_export import export_onnx

    models.mkdir(parents=True, exist_ok=True)
    for name, factory in MODELS.items():
        torch.manual_seed(0)
        export_onnx(factory(), torch.zeros(2, 3, 224, 224), models / f"{name}.onnx", "dynamo", 18, dynamic_batch=True)
    export_batch_one("deit_tiny", models / "deit_tiny_b1.onnx")


def run(out: Path, deadline_minutes: float, only: list[str] | None, trials: int, estimates: dict) -> int:
    """Assemble, then run the jobs in order within the deadline; pack everything into one archive."""
    started = time.monotonic()
    results = STAGE / "results"
    shutil.rmtree(results, ignore_errors=True)
    (results / "logs").mkdir(parents=True)
    site = assemble()
    # PYTHONSAFEPATH: the jobs run in the tree, whose saddc/ folder (not the installed package,
    # which maps saddc.passes to passes/) must not shadow the assembled one.
    environment = dict(os.environ, PYTHONPATH=str(site), PYTHONSAFEPATH="1", PYTHONUNBUFFERED="1")
    record = {"assembled_seconds": round(time.monotonic() - started, 1), "jobs": []}
    for name, argv, extra in jobs(results, trials):
        if only and name not in only:
            continue
        left = deadline_minutes * 60 - (time.monotonic() - started)
        if left < estimates.get(name, 60):
            record["jobs"].append({"job": name, "skipped": f"{left:.0f} s left, needs about {estimates.get(name, 60)}"})
            print(f"== {name}: skipped ({left:.0f} s left)", flush=True)
            continue
        print(f"== {name}", flush=True)
        job_started = time.monotonic()
        with open(results / "logs" / f"{name}.log", "w") as log:
            try:
                code = subprocess.run(argv, cwd=ROOT, env={**environment, **extra}, stdout=log,
                                      stderr=subprocess.STDOUT, timeout=left).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
        seconds = round(time.monotonic() - job_started, 1)
        record["jobs"].append({"job": name, "exit": code, "seconds": seconds})
        print(f"   exit {code} after {seconds} s; log tail:\n" + _tail(results / "logs" / f"{name}.log"), flush=True)
    (results / "session.json").write_text(json.dumps(record, indent=1))
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "gpu_session.tar.gz", "w:gz") as archive:
        archive.add(results, arcname="gpu_session")
    print(f"wrote {out / 'gpu_session.tar.gz'}")
    return 0 if all(job.get("exit") == 0 for job in record["jobs"]) else 1


def _tail(path: Path, lines: int = 6) -> str:
    return "\n".join("   | " + line for line in path.read_text(errors="replace").splitlines()[-lines:])


# Seconds each job needs, for the deadline: guesses, from the compile times of a rehearsal on
# the two-core CPU machine (every CUDA variant: DeiT-Tiny 78 s, PVTv2-b0 247 s; export 14 s);
# revise them with session.json's figures.
ESTIMATES = {"deploy": 20, "gpu-tests": 180, "export": 30, "bench-deit": 240, "gate": 120, "bench-pvt": 360,
             "kernels": 180, "tune": 240}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="here: fill .gpu-kit/ for the GPU machine")
    packing.add_argument("--python", default="3.12", help="the GPU machine's python version (default 3.12)")
    commands.add_parser("stage", help="there, call 1: keep .gpu-kit/a for call 2")
    running = commands.add_parser("run", help="there, call 2: assemble and run the jobs")
    running.add_argument("--out", type=Path, required=True, help="where the archive goes ($OUT)")
    running.add_argument("--deadline", type=float, default=9.0, help="minutes the whole run may take (default 9)")
    running.add_argument("--jobs", help=f"comma-separated, from {','.join(ESTIMATES)} (default: all, in that order)")
    running.add_argument("--trials", type=int, default=32, help="MetaSchedule trials per kernel for tune (default 32)")
    exporting = commands.add_parser("export", help="(a job of run) export the example models")
    exporting.add_argument("models", type=Path)
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.python)
        return 0
    if args.command == "stage":
        stage()
        return 0
    if args.command == "export":
        export(args.models)
        return 0
    only = args.jobs.split(",") if args.jobs else None
    if only and set(only) - set(ESTIMATES):
        parser.error(f"unknown jobs {sorted(set(only) - set(ESTIMATES))} (choose from {', '.join(ESTIMATES)})")
    return run(args.out, args.deadline, only, args.trials, ESTIMATES)


if __name__ == "__main__":
    raise SystemExit(main())
