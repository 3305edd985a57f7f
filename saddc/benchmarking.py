"""What benchmark scripts share: the machine they ran on, and summaries of repeated timings.

Timings are taken side by side in one process (these machines are noisy); results name the
machine (CPU model and cores, or the GPU) and the method. torch is imported only for GPU facts.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
from pathlib import Path


def machine(is_cuda: bool) -> dict:
    """Host, CPU model, core count, and on a GPU run the GPU's name."""
    info = {"host": platform.node(), "cpu": cpu_name(), "cores": os.cpu_count()}
    if is_cuda:
        import torch  # pylint: disable=import-outside-toplevel

        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def machine_slug(info: dict) -> str:
    """A file-name tag for the machine: its GPU, or its CPU and core count."""
    name = info.get("gpu") or f"{info['cpu']} {info['cores']}core"
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-").replace("--", "-")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_arch() -> str:
    """The first GPU's ``sm_XY``."""
    import torch  # pylint: disable=import-outside-toplevel

    major, minor = torch.cuda.get_device_capability(0)
    return f"sm_{major}{minor}"


def summary(seconds: list[float]) -> dict:
    """Median, min and max in microseconds, and how many repeats they summarize."""
    return {"median_us": statistics.median(seconds) * 1e6, "min_us": min(seconds) * 1e6,
            "max_us": max(seconds) * 1e6, "repeats": len(seconds)}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
