"""The `conveyor` command as a user runs it: real subprocesses, real files, exit codes and one-line errors."""

from __future__ import annotations

import json
import os

import joblib
import numpy as np
import pandas as pd
import pytest

from conveyor.sales_data import generate_sales
from conveyor.store import ModelStore
from tests.conftest import assert_one_line_error, conveyor

pytestmark = pytest.mark.integration


@pytest.fixture
def iris_files(tmp_path, iris_model):
    est, X = iris_model
    model = tmp_path / "iris.joblib"
    joblib.dump(est, model)
    example = tmp_path / "example.csv"
    X.iloc[:5].to_csv(example, index=False)
    return model, example, est, X


def test_models_lifecycle(tmp_path, iris_files):
    model, example, _, _ = iris_files
    store = str(tmp_path / "store")
    out = conveyor("models", "add", "iris", str(model), "--example", str(example), "--store", store).stdout
    assert "added iris:1 (sklearn)" in out and "x0:float" in out
    conveyor("models", "add", "iris", str(model), "--store", store)
    conveyor("models", "promote", "iris", "1", "--alias", "production", "--store", store)
    listing = conveyor("models", "list", "--store", store).stdout
    assert "iris" in listing and "production->1" in listing
    shown = conveyor("models", "show", "iris", "--store", store).stdout
    assert "iris:1" in shown and "aliases: production" in shown and "sha256" in shown
    manifest = json.loads(conveyor("models", "show", "iris:2", "--json", "--store", store).stdout)
    assert manifest["version"] == 2 and manifest["flavor"] == "sklearn"
    assert_one_line_error(conveyor("models", "rm", "iris:1", "--store", store, check=False), 1, "aliased as production")
    assert "removed iris:2" in conveyor("models", "rm", "iris:2", "--store", store).stdout


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["models", "show", "nosuch"], 3, "no model named 'nosuch'"),
        (["models", "show", "iris:7"], 3, "iris has no version 7"),
        (["models", "show", "iris@staging"], 3, "iris has no alias 'staging'"),
        (["serve", "nosuch"], 3, "no model named 'nosuch'"),
        (["models", "add", "iris", "/no/such/file.joblib"], 3, "/no/such/file.joblib"),
        (["train", "sales", "--data", "/no/such/history.csv"], 3, "/no/such/history.csv"),
    ],
)
def test_bad_commands_print_one_line(tmp_path, iris_files, args, code, text):
    model, *_ = iris_files
    store = str(tmp_path / "store")
    conveyor("models", "add", "iris", str(model), "--store", store)
    assert_one_line_error(conveyor(*args, "--store", store, check=False), code, text)


def test_predict_file(tmp_path, iris_files):
    model, _, est, X = iris_files
    store = str(tmp_path / "store")
    conveyor("models", "add", "iris", str(model), "--store", store)
    X.assign(id=range(len(X))).to_csv(tmp_path / "in.csv", index=False)
    out = conveyor(
        "predict",
        "iris",
        "--input",
        str(tmp_path / "in.csv"),
        "--output",
        str(tmp_path / "out.parquet"),
        "--store",
        store,
    ).stdout
    assert "wrote 300 predictions by iris:1" in out
    result = pd.read_parquet(tmp_path / "out.parquet")
    assert result["id"].tolist() == list(range(300))
    assert result["prediction"].tolist() == est.predict(X).tolist()
    bad = X.copy().astype(object)
    bad.loc[41, "x2"] = "oops"
    bad.to_json(tmp_path / "bad.jsonl", orient="records", lines=True)
    proc = conveyor(
        "predict",
        "iris",
        "--input",
        str(tmp_path / "bad.jsonl"),
        "--output",
        str(tmp_path / "o.csv"),
        "--store",
        store,
        check=False,
    )
    assert_one_line_error(proc, 2, "'x2' must be a finite number, got 'oops' (row 41)")
    assert not (tmp_path / "o.csv").exists()


def test_corrupted_artifact_exits_4(tmp_path, iris_files):
    model, *_ = iris_files
    store = tmp_path / "store"
    conveyor("models", "add", "iris", str(model), "--store", str(store))
    with open(store / "iris" / "1" / "model.joblib", "ab") as f:
        f.write(b"\0")
    proc = conveyor("predict", "iris", "--input", "x.csv", "--output", "y.csv", "--store", str(store), check=False)
    assert_one_line_error(proc, 4, "does not match its manifest checksum")


def test_train_sales_on_a_csv_with_series_columns(tmp_path):
    history = generate_sales(2, ["BEVERAGES", "PRODUCE"], start="2015-01-01", periods=400, seed=3)
    history.to_csv(tmp_path / "sales.csv", index=False)
    store = str(tmp_path / "store")
    proc = conveyor(
        "train",
        "sales",
        "--data",
        str(tmp_path / "sales.csv"),
        "--series-cols",
        "store_nbr,family",
        "--range-max",
        "30",
        "--promote",
        "production",
        "--plot",
        str(tmp_path / "bt.png"),
        "--store",
        store,
    )
    assert "trained sales:1" in proc.stdout and "sales@production -> 1" in proc.stdout
    assert (tmp_path / "bt.png").read_bytes()[:4] == b"\x89PNG"
    m = ModelStore(store).manifest("sales")
    assert "backtest.png" in m["files"] and m["flavor"] == "forecaster"
    assert m["data_fingerprint"]
    series = m["signature"]["inputs"][0]["choices"]
    assert set(series) == {"1/BEVERAGES", "1/PRODUCE", "2/BEVERAGES", "2/PRODUCE", "total"}
    assert np.isfinite(m["metrics"]["overall"]["mase"])
    missing = conveyor(
        "train", "sales", "--data", str(tmp_path / "sales.csv"), "--sales-col", "revenue", "--store", store, check=False
    )
    assert_one_line_error(missing, 2, "'revenue'")


def test_train_sales_reads_day_first_dates_and_records_the_format(tmp_path):
    """01/01/2016 .. 09/02/2016 was read month-first up to 12/01/2016, then refused with a --date-col hint."""
    days = pd.date_range("2016-01-01", periods=40, freq="D")
    sales = pd.DataFrame({"date": days.strftime("%d/%m/%Y"), "sales": np.arange(40.0) % 7 + 10})
    sales.to_csv(tmp_path / "sales.csv", index=False)
    store = str(tmp_path / "store")
    proc = conveyor("train", "sales", "--data", str(tmp_path / "sales.csv"), "--range-max", "7", "--store", store)
    assert "history: 40 rows, 1 series, 2016-01-01 .. 2016-02-09 (dates read as %d/%m/%Y)" in proc.stdout
    shown = json.loads(conveyor("models", "show", "sales", "--json", "--store", store).stdout)
    assert shown["date_format"] == "%d/%m/%Y"
    sales.head(10).to_csv(tmp_path / "ten.csv", index=False)  # 01/01 .. 10/01: day-first or month-first
    ambiguous = conveyor("train", "sales", "--data", str(tmp_path / "ten.csv"), "--store", store, check=False)
    assert_one_line_error(ambiguous, 2, "pass --date-format %d/%m/%Y or %m/%d/%Y")
    given = conveyor("train", "sales", "--data", str(tmp_path / "ten.csv"), "--date-format", "%Y-%m-%d", check=False)
    assert_one_line_error(given, 2, "(first: row 0, '01/01/2016') in format %Y-%m-%d (given by --date-format)")


def test_help_reads_well():
    out = conveyor("--help").stdout
    for command in ("train", "models", "serve", "predict"):
        assert command in out
    serve_help = conveyor("serve", "--help").stdout
    assert "--workers" in serve_help and "--max-batch-rows" in serve_help and "--poll-interval" in serve_help


def test_signing_key_refuses_unsigned_models_at_serve_time(tmp_path, iris_files):
    model, *_ = iris_files
    store = str(tmp_path / "store")
    conveyor("models", "add", "iris", str(model), "--store", store)
    env = {**os.environ, "CONVEYOR_SIGNING_KEY": "k"}
    proc = conveyor("serve", "iris", "--store", store, check=False, env=env)
    assert_one_line_error(proc, 4, "not signed and CONVEYOR_SIGNING_KEY is set")
    conveyor("models", "add", "iris", str(model), "--store", store, env=env)
    shown = conveyor("models", "show", "iris:2", "--store", store, env=env).stdout
    assert "signed:  yes" in shown


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("models", "list", "--store", "gs://bucket/models"), "gcsfs (for gs://) is not installed"),
        (("data", "generate", "--stores", "1", "--families", "1", "--output", "s3://bucket/x.csv"), "conveyor-ml[aws]"),
    ],
)
def test_an_object_store_without_its_extra_is_one_line(args, text, tmp_path):
    """fsspec raised a bare ImportError ("Please install gcsfs") and the command printed its traceback."""
    import importlib.util

    if importlib.util.find_spec("gcsfs") or importlib.util.find_spec("s3fs"):
        pytest.skip("the gcp/aws extras are installed here")
    assert_one_line_error(conveyor(*args, check=False, cwd=tmp_path), 5, text)


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("deploy", "k8s", "sales", "-o", "k8s", "--expose", "nope"), "Invalid value for '--expose': 'nope'"),
        (("serve",), "name the model(s) to serve, e.g. `conveyor serve sales`, or give --all"),
        (("nope",), "No such command 'nope'. (see: "),
        (("train", "sales", "--range-max", "0"), "Invalid value for '--range-max'"),
    ],
)
def test_a_usage_error_is_one_line_too(args, text, tmp_path):
    """click printed usage, a hint and the error on three lines (and 'Error:' where ours say 'error:')."""
    assert_one_line_error(conveyor(*args, check=False, cwd=tmp_path), 2, text)


def test_predict_refuses_an_output_it_cannot_write_before_any_work(tmp_path):
    """The model was loaded and the whole file scored before `--output x.xlsx` was found unwritable."""
    proc = conveyor("predict", "nowhere", "--input", "in.csv", "--output", "x.xlsx", check=False, cwd=tmp_path)
    assert_one_line_error(proc, 1, "cannot tell the format of 'x.xlsx'")
