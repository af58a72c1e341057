"""A private PostgreSQL cluster from Debian's packages, on a free port in a temporary directory.

Skipped with the reason when the server binaries are missing, except under CI=true, where it fails:
CI must install `postgresql`. As root, the cluster runs as the `postgres` user (initdb refuses root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_user(cmd: list[str], user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--", *cmd] if user else cmd


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL of a fresh database; the server is stopped and its files removed at the end."""
    bindir = _bindir()
    if bindir is None:
        message = "PostgreSQL server binaries not found: apt-get install -y postgresql"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    user = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root needs the 'postgres' user (installed by the postgresql package)")
        user = "postgres"
    root = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
    if user:
        shutil.chown(root, user)
    data, port = root / "data", free_port()
    log = root / "server.log"
    subprocess.run(
        _as_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"], user),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"]
    try:
        subprocess.run(_as_user(start, user), check=True, capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], user), capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)
