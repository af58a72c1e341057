"""`conveyor pipeline` refusals that need no Airflow run: each is one readable line and a non-zero exit."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import assert_one_line_error, conveyor

WITHOUT_AIRFLOW = "import sys; sys.modules['airflow'] = None; from conveyor.cli import main; main()"


def test_without_the_airflow_extra_the_error_names_the_pip_install(tmp_path):
    (tmp_path / "dags").mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_AIRFLOW, "pipeline", "run", "sales"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(proc, 5, "apache-airflow is not installed: run  pip install 'conveyor-ml[airflow]'")


def test_init_writes_a_dag_file_with_absolute_paths_and_the_options_given(tmp_path):
    conveyor(
        "pipeline", "init", "weekly", "--dags-folder", "flows", "--data", "sales.csv", "--series-cols", "store,sku",
        "--predictions", "sqlite:///out/p.db", "--range", "12", "--schedule", "none", "--email", "a@example.com",
        cwd=tmp_path,
    )  # fmt: skip
    text = (tmp_path / "flows" / "weekly.py").read_text()
    call = next(
        n
        for n in ast.walk(ast.parse(text))
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "sales_pipeline"
    )
    kw = {k.arg: k.value for k in call.keywords}
    assert ast.literal_eval(kw["data"]) == str(tmp_path / "sales.csv")
    assert ast.literal_eval(kw["store"]) == str(tmp_path / "models")
    assert ast.literal_eval(kw["predictions"]) == f"sqlite:///{tmp_path}/out/p.db"
    assert ast.literal_eval(kw["series_cols"]) == ("store", "sku")
    assert ast.literal_eval(kw["range"]) == 12 and ast.literal_eval(kw["schedule"]) is None
    assert "airflow" in text and "dag" in text  # what Airflow's DAG discovery looks for in a file


def test_refusals_before_any_run(tmp_path):
    (tmp_path / "dags").mkdir()
    missing = conveyor("pipeline", "run", "sales", "--data", "nope.csv", check=False, cwd=tmp_path)
    assert_one_line_error(missing, 3, "history file 'nope.csv' does not exist")
    neither = conveyor("pipeline", "rerun", "sales", "latest", check=False, cwd=tmp_path)
    assert_one_line_error(neither, 2, "pass exactly one of --failed or --from TASK")
    bad_name = conveyor("pipeline", "init", "../x", check=False, cwd=tmp_path)
    assert bad_name.returncode != 0 and "pipeline name" in bad_name.stderr
