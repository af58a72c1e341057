"""How many CPUs this process may use: the number of workers `conveyor serve` starts by default.

`os.cpu_count()` counts the machine's CPUs. In a container given one CPU (`docker run --cpus 1`, a pod's
`limits.cpu: 1`) on a 32-core node it still says 32, and 32 workers would share one CPU's time while each holds its
own copy of the model. As the JVM and Go (GOMAXPROCS, since 1.25) do, the default honours the CPUs the process may
run on (taskset, cpusets) and its cgroup's CPU quota, rounded up.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(proc_cgroup: Path = PROC_CGROUP, cgroup_root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may run on, capped by its CPU quota (rounded up); at least 1."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cpu_quota(proc_cgroup, cgroup_root)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def cpu_quota(proc_cgroup: Path = PROC_CGROUP, cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """The tightest CPU quota, in CPUs, of this process's cgroup and the cgroups above it; None when unlimited.

    cgroup v2 keeps it in `cpu.max` ("QUOTA PERIOD", or "max PERIOD"), v1 in the cpu controller's
    `cpu.cfs_quota_us` (-1: none) and `cpu.cfs_period_us`. The path in /proc/self/cgroup is the host's when the
    container has no cgroup namespace and its own cgroup is mounted at the root, so every directory from the
    path up to the mount's root is read, and the ones that do not exist are passed over.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        hierarchy, controllers, path = [*line.split(":", 2), "", ""][:3]
        if hierarchy == "0" and controllers == "":  # v2's unified hierarchy
            for directory in _up_from(cgroup_root, path):
                quotas.append(_v2_quota(directory / "cpu.max"))
        elif "cpu" in controllers.split(","):
            mount = cgroup_root / controllers
            if not mount.is_dir():
                mount = cgroup_root / "cpu"
            for directory in _up_from(mount, path):
                quotas.append(_v1_quota(directory))
    found = [q for q in quotas if q is not None]
    return min(found) if found else None


def _up_from(root: Path, path: str) -> list[Path]:
    """root/a/b, root/a and root for the cgroup path "/a/b"."""
    parts = [p for p in path.strip().split("/") if p and p not in (".", "..")]
    return [root.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _v2_quota(cpu_max: Path) -> float | None:
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
