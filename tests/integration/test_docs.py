"""Docs are code: every page's commands run as written, and print what the page shows (tests/docrun.py)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.docrun import DocFailure, parse, run_page

pytestmark = [pytest.mark.integration, pytest.mark.docs]

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def page_env(tmp: Path) -> dict[str, str]:
    """A reader's shell after `make install`: the project's venv first on PATH, no CONVEYOR_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "PYTEST_", "PROMETHEUS_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(COLUMNS="120", MPLBACKEND="Agg", PYTHONUNBUFFERED="1", TMPDIR=str(tmp))
    return env


@pytest.mark.slow
@pytest.mark.parametrize("path", PAGES, ids=[p.stem for p in PAGES])
def test_page_runs_as_written(path: Path, tmp_path: Path) -> None:
    page = parse(path)
    missing = [exe for exe in page.needs if shutil.which(exe) is None]
    if missing:
        message = f"{path.name} needs {', '.join(missing)} (scripts/test-deps.sh installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    work = tmp_path / "work"
    work.mkdir()
    try:
        result = run_page(page, ROOT if page.cwd_repo else work, page_env(tmp_path), sys.executable)
    except DocFailure as exc:
        failure = str(exc)
    else:
        failure = None
    if failure:
        pytest.fail(failure, pytrace=False)
    for skipped in result.skipped:
        print(f"skipped {skipped}")
