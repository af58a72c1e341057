"""The default worker count follows the CPUs the process may use: its affinity and its cgroup's CPU quota."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.cpus import cpu_quota, usable_cpus

WORKERS = "from conveyor.settings import ServeSettings; print(ServeSettings().workers)"
CPU_V1 = Path("/sys/fs/cgroup/cpu")


def tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_v2_takes_the_tightest_quota_up_the_tree(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1/ctr\n")
    tree(
        tmp_path / "fs",
        {
            "kubepods/pod1/ctr/cpu.max": "max 100000\n",
            "kubepods/pod1/cpu.max": "150000 100000\n",  # the pod's limits.cpu: 1.5
            "kubepods/cpu.max": "max 100000\n",
        },
    )
    assert cpu_quota(proc, tmp_path / "fs") == 1.5
    assert usable_cpus(proc, tmp_path / "fs") == min(len(os.sched_getaffinity(0)), 2)


def test_v1_without_a_cgroup_namespace_reads_the_mounted_root(tmp_path: Path) -> None:
    """Docker on cgroup v1: /proc/self/cgroup names the host's path, the container's cgroup is the mount's root."""
    proc = tmp_path / "cgroup"
    proc.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    tree(tmp_path / "fs", {"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert cpu_quota(proc, tmp_path / "fs") == 0.5
    assert usable_cpus(proc, tmp_path / "fs") == 1


@pytest.mark.parametrize(
    ("proc_text", "files"),
    [
        ("0::/\n", {"cpu.max": "max 100000\n"}),  # v2, unlimited
        ("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}),  # v1, unlimited
        ("0::/a\n", {"a/cpu.max": "garbage\n"}),  # unreadable: as if unlimited, never a crash
        ("", {}),  # no cgroups at all
    ],
)
def test_no_quota_leaves_the_affinity(tmp_path: Path, proc_text: str, files: dict[str, str]) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text(proc_text)
    tree(tmp_path / "fs", files)
    assert cpu_quota(proc, tmp_path / "fs") is None
    assert usable_cpus(proc, tmp_path / "fs") == len(os.sched_getaffinity(0))


def test_missing_proc_file_is_no_quota(tmp_path: Path) -> None:
    assert cpu_quota(tmp_path / "absent", tmp_path) is None


def test_taskset_to_one_cpu_starts_one_worker() -> None:
    """A real affinity (taskset): one CPU, one worker, whatever os.cpu_count() says."""
    cpu = str(min(os.sched_getaffinity(0)))
    out = subprocess.run(
        ["taskset", "--cpu-list", cpu, sys.executable, "-c", WORKERS], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "1"


def test_a_real_cgroup_v1_quota_caps_the_workers() -> None:
    """A real cgroup with half a CPU's quota (as `docker run --cpus 0.5`): one worker, even with every CPU free."""
    if not (CPU_V1 / "cpu.cfs_quota_us").exists() or not os.access(CPU_V1, os.W_OK):
        if os.environ.get("CI") == "true" and os.geteuid() == 0 and CPU_V1.is_dir():
            pytest.fail(f"{CPU_V1} is not writable as root in CI")
        pytest.skip("needs root and cgroup v1's cpu controller at /sys/fs/cgroup/cpu")
    group = CPU_V1 / f"conveyor-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "cpu.cfs_quota_us").write_text("50000")
        period = int((group / "cpu.cfs_period_us").read_text())
        script = f'echo $$ > {group}/cgroup.procs && exec "$0" -c "$1"'
        out = subprocess.run(["sh", "-c", script, sys.executable, WORKERS], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == str(min(len(os.sched_getaffinity(0)), math.ceil(50000 / period)))
        assert out.stdout.strip() == "1"
    finally:
        group.rmdir()
