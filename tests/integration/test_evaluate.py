"""`conveyor train sales` options of issue 13 and `conveyor evaluate`, as a user runs them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from conveyor.store import ModelStore
from tests.conftest import assert_one_line_error, conveyor


def _history(path, days: int = 500, drop_last_of: str | None = None) -> None:
    rng = np.random.default_rng(3)
    dates = pd.date_range("2015-01-01", periods=days, freq="D")
    week = np.resize([1.0, 1.1, 0.9, 1.0, 1.2, 1.4, 0.8], days)
    rows = []
    for store, level in ((1, 100.0), (2, 300.0)):
        sales = level * week + rng.normal(0, level * 0.03, days)
        sales[(dates.month == 1) & (dates.day == 1)] *= 0.05
        rows.append(pd.DataFrame({"date": dates.strftime("%d/%m/%Y"), "store": store, "sales": sales.round(2)}))
    pd.concat(rows).to_csv(path, index=False)


def test_train_then_evaluate_on_newer_data_scores_what_the_model_could_not_see(tmp_path):
    _history(tmp_path / "all.csv", 500)
    everything = pd.read_csv(tmp_path / "all.csv")
    cut = pd.to_datetime(everything["date"], format="%d/%m/%Y") < "2016-03-01"
    everything[cut].to_csv(tmp_path / "early.csv", index=False)
    store = str(tmp_path / "models")
    trained = conveyor("train", "sales", "--data", str(tmp_path / "early.csv"), "--series-cols", "store",
                       "--range-max", "120", "--fill", "zero", "--candidates", "linear,holt_winters",
                       "--country", "GB", "--store", store)  # fmt: skip
    out = trained.stdout
    assert "(dates read as %d/%m/%Y)" in out
    assert "cross-validation: 3 windows of" in out and "seasonal_naive" in out and "holt_winters" in out
    assert "bands: the 80% band held" in out
    manifest = ModelStore(store).manifest("sales")
    assert manifest["flavor"] == "forecaster"
    assert manifest["metrics"]["fill"] == "zero" and manifest["metrics"]["country"] == "GB"
    assert manifest["metrics"]["candidates"] == ["seasonal_naive", "linear", "holt_winters"]
    assert manifest["read"] == {"date_col": "date", "sales_col": "sales", "series_cols": ["store"],
                                "date_format": "%d/%m/%Y"}  # fmt: skip
    assert set(manifest["metrics"]["coverage"]) == {"80", "95"}

    shown = conveyor("evaluate", "sales", "--data", str(tmp_path / "all.csv"), "--store", store, "--per-series",
                     "--plot", str(tmp_path / "bt.png"))  # fmt: skip
    lines = [line for line in shown.stdout.splitlines() if not line.startswith("fitting series")]  # progress
    assert lines[0].startswith("evaluated sales:1 on 1,500 rows, 3 series, 2015-01-01 .. 2016-05-14")
    assert any(line.startswith("  1") and "80%" not in line for line in lines)  # a per-series row for store 1
    ahead = [line for line in lines if line.startswith("ahead of training (2016-03-01 .. 2016-05-14, 3 series)")]
    assert ahead, shown.stdout
    assert (tmp_path / "bt.png").read_bytes()[:4] == b"\x89PNG"

    as_json = json.loads(conveyor("evaluate", "sales", "--data", str(tmp_path / "all.csv"), "--store", store,
                                  "--json").stdout)  # fmt: skip
    got = as_json["ahead_of_training"]
    assert got["overall"]["mase"] < got["overall"]["naive_mase"]  # a weekly pattern beats repeating last week
    assert got["series"]["1"]["points"] == 75
    assert as_json["cross_validation"]["fill"] == "zero"


def test_a_short_history_is_cut_to_the_horizon_it_supports_with_a_warning(tmp_path):
    pd.DataFrame({"date": pd.date_range("2020-03-01", periods=10).strftime("%Y-%m-%d"),
                  "sales": np.arange(10.0) + 100}).to_csv(tmp_path / "short.csv", index=False)  # fmt: skip
    proc = conveyor("train", "sales", "--data", str(tmp_path / "short.csv"), "--store", str(tmp_path / "m"))
    assert proc.stderr.strip().splitlines()[-1] == (
        "warning: 10 periods (D) of history support forecasts up to 5 periods ahead (half the history): "
        "the horizon 365 was cut to 5"
    )
    assert "horizon up to 5)" in proc.stdout
    assert ModelStore(tmp_path / "m").manifest("sales")["metrics"]["horizon"] == {"asked": 365, "cap": 5,
                                                                                 "range_max": 5}  # fmt: skip


def test_evaluate_refuses_what_it_cannot_score_in_one_line(tmp_path, store_dir):
    assert_one_line_error(conveyor("evaluate", "iris", "--store", str(store_dir), check=False), 2,
                          "iris:1 is a sklearn model, not a sales forecaster")  # fmt: skip
    assert_one_line_error(conveyor("evaluate", "nope", "--store", str(store_dir), check=False), 3, "no model named")
    bad = conveyor("train", "sales", "--candidates", "prophet", "--store", str(tmp_path / "m"), check=False)
    assert_one_line_error(bad, 2, "unknown candidate(s) ['prophet']")


def test_evaluate_scores_a_version_saved_before_cross_validation_and_the_80_band(tmp_path):
    """tests/data/old_forecaster_store: flavor statsmodels, no 80% band, no recorded read settings."""
    from pathlib import Path

    old = Path(__file__).parents[1] / "data" / "old_forecaster_store"
    proc = conveyor("evaluate", "sales", "--store", str(old))
    assert "Traceback" not in proc.stderr
    assert "bands there: the 95% band held" in proc.stdout and "80% band held" not in proc.stdout.split("ahead")[-1]
