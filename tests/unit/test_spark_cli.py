"""`--engine spark` where pyspark is not installed: one line naming the extra, before any work."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import assert_one_line_error

WITHOUT_PYSPARK = "import sys; sys.modules['pyspark'] = None; from conveyor.cli import main; main()"


def test_without_the_spark_extra_the_error_names_the_pip_install(tmp_path, store_dir):
    (tmp_path / "in.csv").write_text("id,x0,x1,x2,x3\n1,0.1,0.2,0.3,0.4\n")
    for command in (
        ["score", "iris", "--input", "in.csv", "--output", "o.csv"],
        ["forecast", "sales", "--history", "in.csv", "--range", "3", "--output", "f.csv"],
    ):
        proc = subprocess.run(
            [sys.executable, "-c", WITHOUT_PYSPARK, "batch", *command, "--store", str(store_dir), "--engine", "spark"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert_one_line_error(proc, 5, "pyspark is not installed: run  pip install 'conveyor-ml[spark]'")
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "f.csv").exists()
