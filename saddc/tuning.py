"""MetaSchedule tuning of the kernels saddc schedules with generic rules, and the databases
``compile`` applies.

``saddc tune model.onnx --target llvm --trials 64 --db DIR``:

1. lower the model (with the rewrites asked for) to the end of the legalize phase: the kernels
   the schedule phase sees;
2. take as tasks the kernels with no schedule of saddc's own (dense matmuls, layernorms,
   softmaxes, elementwise chains; saddc's primitives keep their hand schedules);
3. tune them with MetaSchedule (evolutionary search, XGBoost cost model, local builder and
   runner, so on the machine of the target);
4. time each task's default schedule (DLight's rules and saddc's CPU rules) with the same
   runner, and keep a tuned record only where it beats it: a database only ever makes a
   kernel faster than the schedule it replaces;
5. write ``DIR/database_workload.json`` and ``DIR/database_tuning_record.json``, merged with
   what DIR held, by renaming complete files into place.

``compile`` applies the database given with ``--db``, else the one shipped for the target in
``saddc/tuning_db/<kind>-<arch>/``, if any (``passes/apply_tuning_database.py``).
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from saddc import artifacts
from saddc.errors import SaddcError

SHIPPED = Path(__file__).resolve().parent / "tuning_db"
WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"


def shipped_database(target) -> Path | None:
    """The database saddc ships for ``target`` (a TargetSpec), if it ships one with records (a
    tuning run that kept none, as on a CPU where saddc's rules won every kernel, is none)."""
    records = SHIPPED / f"{target.kind}-{target.arch}" / RECORD_FILE
    return records.parent if records.is_file() and records.stat().st_size > 0 else None


def open_database(path: str | Path):
    """A MetaSchedule JSON database read from the directory ``path``."""
    from tvm.s_tir import meta_schedule as ms  # pylint: disable=import-outside-toplevel

    path = Path(path)
    if not (path / WORKLOAD_FILE).is_file() or not (path / RECORD_FILE).is_file():
        raise SaddcError(f"{path}: not a tuning database (no {WORKLOAD_FILE} and {RECORD_FILE}; "
                         f"make one with saddc tune)")
    try:
        return ms.database.JSONDatabase(str(path / WORKLOAD_FILE), str(path / RECORD_FILE), allow_missing=False)
    except Exception as error:  # pylint: disable=broad-except
        raise SaddcError(f"{path}: unreadable tuning database ({str(error).splitlines()[-1]})") from None


def tuning_target(spec):
    """The target MetaSchedule needs: llvm with its core count, cuda with the device limits
    (``saddc.target.CUDA_LIMITS``) that compiles use too."""
    # pylint: disable=import-outside-toplevel
    from saddc.runtime import physical_cores
    from saddc.target import tvm_llvm_target

    return spec.to_tvm() if spec.is_cuda else tvm_llvm_target(spec.arch, physical_cores())


@dataclass
class TunedKernel:
    """One task: its default schedule's and the best tuned schedule's time, and whether the
    tuned record went into the database (it was faster, or slower ones were kept too)."""

    name: str
    weight: int
    default_us: float | None
    tuned_us: float | None
    trials: int
    kept: bool


def _progress_callback(bar, failures: list[str]):
    """A measure callback that advances ``bar`` by every measured candidate and collects the
    error of every candidate that failed to build or run."""
    # pylint: disable=import-outside-toplevel
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class ProgressBar(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            del task_scheduler, task_id, measure_candidates
            for built, ran in zip(builder_results, runner_results):
                error = built.error_msg or ran.error_msg
                if error:
                    failures.append(str(error).strip().splitlines()[-1])
            bar.update(len(runner_results))

    return ProgressBar()


def build_candidate(mod, target, _params):
    """MetaSchedule's default build without its import of ``tvm.s_tir.tensor_intrin``: the
    builder would pay that import in every fresh worker (it restarts its pool on every batch;
    18 s in a fresh process), which timed the builds out. Tensorized intrinsics do not occur in
    float32 schedules."""
    # pylint: disable=import-outside-toplevel
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def _median_us(run_secs) -> float | None:
    values = [float(seconds) for seconds in run_secs]
    # MetaSchedule records a failed build or run as 1e10 seconds.
    return None if not values or min(values) >= 1e9 else statistics.median(values) * 1e6


def _time_default_schedules(tasks, rules, target, device, builder, runner) -> list[float | None]:
    """Each task's kernel under the rules the schedule phase would apply, timed like a trial."""
    # pylint: disable=import-outside-toplevel
    import tvm
    from tvm.s_tir import dlight as dl
    from tvm.s_tir import meta_schedule as ms

    modules = []
    for task in tasks:
        # A copy: passes may update a module nothing else references in place, and the task's
        # module is the database's workload.
        with target:
            modules.append(dl.ApplyDefaultSchedule(*rules)(tvm.IRModule(dict(task.dispatched[0].functions))))
    built = builder.build([ms.builder.BuilderInput(mod, target) for mod in modules])
    inputs, positions = [], []
    for index, (mod, result) in enumerate(zip(modules, built)):
        if result.error_msg is None:
            inputs.append(ms.runner.RunnerInput(result.artifact_path, device, ms.arg_info.ArgInfo.from_entry_func(mod)))
            positions.append(index)
    times: list[float | None] = [None] * len(modules)
    for index, future in zip(positions, runner.run(inputs)):
        result = future.result()
        if result.error_msg is None:
            times[index] = _median_us(result.run_secs)
    return times


def tune(model, database_dir: str | Path, target: str = "llvm", arch: str | None = None, trials: int = 64,
         kernels: str | None = None, keep_slower: bool = False, progress: bool = True, **rewrites) -> list[TunedKernel]:
    """Tune the kernels of ``model`` (an ONNX path or a Relax module), compiled with the
    ``rewrites`` options of ``saddc.compile`` (shift, attention, moe), into the database in
    ``database_dir`` (see the module doc). ``kernels`` picks the kernels whose name holds it;
    ``keep_slower`` keeps tuned records that lost to the default schedule too. Returns one
    row per kernel."""
    # pylint: disable=import-outside-toplevel
    import tvm

    from saddc.config import LowerConfig
    from saddc.cuda import gpu_visible
    from saddc.pipeline import run_phases
    from saddc.target import parse_target

    config = LowerConfig(target=parse_target(target, arch), tuning_db=None, **rewrites)
    if config.target.is_cuda and not gpu_visible():
        raise SaddcError("tuning for cuda measures every candidate on a GPU, and this machine has none")
    database_dir = artifacts.prepare_directory(database_dir)
    if not isinstance(model, tvm.IRModule):
        from saddc.frontends import import_onnx

        imported = import_onnx(model)
        model, config.layer_names = imported.mod, imported.layer_names
    print("lowering to the kernels the schedule phase sees", file=sys.stderr)
    legalized = run_phases(model, config, until="legalize")
    return _tune_kernels(legalized, config, database_dir, trials, kernels, keep_slower, progress)


def _tune_kernels(legalized, config, database_dir: Path, trials: int, kernels: str | None, keep_slower: bool,
                  progress: bool) -> list[TunedKernel]:
    # pylint: disable=import-outside-toplevel
    from tqdm import tqdm
    from tvm.s_tir import meta_schedule as ms

    from saddc.passes.apply_tuning_database import needs_schedule
    from saddc.pipeline import schedule_rules

    target = tuning_target(config.target)
    tasks = [task for task in ms.relax_integration.extract_tasks(legalized, target)
             if needs_schedule(task.dispatched[0]["main"]) and (kernels is None or kernels in task.task_name)]
    symbolic = [task.task_name for task in tasks if not _static(task.dispatched[0]["main"])]
    if symbolic:
        print(f"not tuning {len(symbolic)} kernels with symbolic shapes (MetaSchedule tunes static shapes; "
              f"export with a fixed batch to tune them): {', '.join(symbolic)}", file=sys.stderr)
    tasks = [task for task in tasks if task.task_name not in symbolic]
    if not tasks:
        raise SaddcError("no kernels to tune" + (f" match '{kernels}'" if kernels else "")
                         + (" with static shapes" if symbolic else ""))
    print(f"tuning {len(tasks)} kernels for {config.target.describe()}, up to {trials} trials each", file=sys.stderr)
    builder = ms.builder.LocalBuilder(f_build=build_candidate)
    runner = ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=50))
    # MetaSchedule's console log takes its level from this logger; the progress bar says the rest.
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="saddc-tune-") as work_dir:
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(tasks, work_dir, seed=0)
        failures: list[str] = []
        with tqdm(total=trials * len(contexts), desc="tuning", unit="trial", disable=not progress, file=sys.stderr) as bar:
            tuned = ms.tune_tasks(
                tasks=contexts, task_weights=weights, work_dir=work_dir, max_trials_global=trials * len(contexts),
                max_trials_per_task=trials, num_trials_per_iter=min(trials, 32), builder=builder, runner=runner,
                cost_model="xgb", measure_callbacks=ms.measure_callback.MeasureCallback.create("default")
                + [_progress_callback(bar, failures)])
        if failures:
            print(f"{len(failures)} candidates failed to build or run; the first: {failures[0]}", file=sys.stderr)
        # The kernels as MetaSchedule normalized them (the database's workloads), with their best records.
        best = [(context.mod, tuned.get_top_k(tuned.commit_workload(context.mod), trials)) for context in contexts]
        print("timing the default schedules", file=sys.stderr)
        device = "cuda" if config.target.is_cuda else "cpu"
        defaults = _time_default_schedules(tasks, schedule_rules(config), target, device, builder, runner)
        rows, keep = [], []
        for task, (mod, records), default_us in zip(tasks, best, defaults):
            tuned_us = _median_us(records[0].run_secs) if records else None
            faster = tuned_us is not None and (default_us is None or tuned_us < default_us)
            kept = faster or (keep_slower and tuned_us is not None)
            rows.append(TunedKernel(task.task_name, int(task.weight), default_us, tuned_us, len(records), kept))
            if kept:
                keep.append((mod, records[0]))
        _write_database(database_dir, keep)
    return rows


def _static(func) -> bool:
    import tvm  # pylint: disable=import-outside-toplevel

    return all(isinstance(dim, tvm.tirx.IntImm) for param in func.params
               if isinstance(param.ty, tvm.tirx.BufferType) for dim in param.ty.shape)


def _write_database(directory: Path, records) -> None:
    """Merge ``records`` ((kernel module, TuningRecord) pairs) into the database in
    ``directory`` and rename the two complete files into place."""
    from tvm.s_tir import meta_schedule as ms  # pylint: disable=import-outside-toplevel

    directory.mkdir(parents=True, exist_ok=True)
    existing = open_database(directory).get_all_tuning_records() if (directory / RECORD_FILE).exists() else []
    with tempfile.TemporaryDirectory(dir=directory, prefix=".partial-") as partial:
        merged = ms.database.JSONDatabase(work_dir=partial)
        for record in existing:
            merged.commit_tuning_record(ms.database.TuningRecord(
                record.trace, merged.commit_workload(record.workload.mod), record.run_secs, record.target,
                record.args_info))
        for mod, record in records:
            merged.commit_tuning_record(ms.database.TuningRecord(
                record.trace, merged.commit_workload(mod), record.run_secs, record.target, record.args_info))
        for name in (WORKLOAD_FILE, RECORD_FILE):
            os.replace(Path(partial) / name, directory / name)


def table(rows: list[TunedKernel]) -> list[str]:
    """The tuning result as text: each kernel's default and tuned time, and which was kept."""
    def us(value):  # under 1 us, significant figures (a serial schedule of a tiny kernel: 0.03 us)
        return "failed" if value is None else f"{value:.1f}" if value >= 1 else f"{value:.2g}"

    width = max([56] + [len(row.name) for row in rows])
    lines = [f"{'kernel':<{width}} {'calls':>5} {'default us':>11} {'tuned us':>10} {'trials':>6}  kept"]
    for row in rows:
        kept = "tuned" if row.kept else "default"
        lines.append(f"{row.name:<{width}} {row.weight:>5} {us(row.default_us):>11} {us(row.tuned_us):>10} "
                     f"{row.trials:>6}  {kept}")
    return lines
