"""scikit-learn models as users register them: a categorical pipeline fitted on a DataFrame, and files told
apart by content. `conveyor models add`, `conveyor predict` and the real server, each scoring the training rows."""

from __future__ import annotations

import pickle

import joblib
import numpy as np
import pandas as pd
import pytest

from tests.conftest import assert_one_line_error, conveyor, start_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def churn(tmp_path_factory):
    """The issue's pipeline: OneHotEncoder on a str column, the numbers passed through, fitted on a DataFrame."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(7)
    n = 300
    X = pd.DataFrame(
        {
            "plan": rng.choice(["basic", "pro", "team"], n),
            "age": rng.integers(18, 70, n),
            "spend": rng.gamma(2.0, 30.0, n).round(2),
        }
    )
    y = np.where((X["plan"] == "pro") | (X["spend"] > 90), "churn", "stay")
    prep = ColumnTransformer(
        [("cat", OneHotEncoder(handle_unknown="ignore"), ["plan"]), ("num", "passthrough", ["age", "spend"])]
    )
    model = Pipeline([("prep", prep), ("clf", LogisticRegression(max_iter=1000))]).fit(X, y)
    root = tmp_path_factory.mktemp("churn")
    joblib.dump(model, root / "model.joblib")
    X.to_csv(root / "rows.csv", index=False)
    return root, X, model


@pytest.mark.parametrize("with_example", [False, True])
def test_a_categorical_pipeline_scores_its_own_training_rows(tmp_path, churn, with_example):
    root, X, model = churn
    store = str(tmp_path / "store")
    example = ["--example", str(root / "rows.csv")] if with_example else []
    added = conveyor("models", "add", "churn", str(root / "model.joblib"), *example, "--store", store).stdout
    assert added.strip() == "added churn:1 (sklearn): inputs plan:str, age:float, spend:float"

    out = tmp_path / "scored.csv"
    args = ["--input", str(root / "rows.csv"), "--output", str(out), "--store", store]
    assert f"wrote {len(X)} predictions by churn:1" in conveyor("predict", "churn", *args).stdout
    scored = pd.read_csv(out)
    assert scored["prediction"].tolist() == model.predict(X).tolist()
    np.testing.assert_allclose(scored["proba_churn"], model.predict_proba(X)[:, 0], atol=1e-9)

    server = start_server(store, "churn", tmp_path)
    try:
        with server.client() as client:
            response = client.post("/predict", json={"instances": X.iloc[:50].to_dict("records")})
            assert response.status_code == 200, response.text
            got = [p["prediction"] for p in response.json()["predictions"]]
            assert got == model.predict(X.iloc[:50]).tolist()
            csv = X.iloc[:5].to_csv(index=False)
            response = client.post("/predict", content=csv, headers={"content-type": "text/csv"})
            assert response.status_code == 200, response.text
            response = client.post("/predict", json={"instances": [{"plan": "pro", "age": "old", "spend": 1}]})
            assert response.status_code == 422 and "'age' must be a finite number" in response.json()["message"]
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("name", "dump"),
    [
        ("reg.pkl", joblib.dump),  # was: invalid load key / STACK_GLOBAL requires str
        ("reg.joblib", lambda m, p: p.write_bytes(pickle.dumps(m))),
        ("reg.pkl", lambda m, p: __import__("skops.io").io.dump(m, p)),
    ],
)
def test_model_files_are_read_by_content_whatever_their_name(tmp_path, iris_model, name, dump):
    est, X = iris_model
    dump(est, tmp_path / name)
    store = str(tmp_path / "store")
    assert "added reg:1 (sklearn)" in conveyor("models", "add", "reg", str(tmp_path / name), "--store", store).stdout
    X.iloc[:20].to_csv(tmp_path / "in.csv", index=False)
    conveyor(
        "predict", "reg", "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "o.csv"), "--store", store
    )
    assert pd.read_csv(tmp_path / "o.csv")["prediction"].tolist() == est.predict(X.iloc[:20]).tolist()


def test_a_file_that_is_not_a_model_is_refused_in_one_line(tmp_path):
    (tmp_path / "model.pkl").write_text("plan,age\npro,31\n")
    proc = conveyor("models", "add", "m", str(tmp_path / "model.pkl"), "--store", str(tmp_path / "s"), check=False)
    assert_one_line_error(proc, 1, "model.pkl is not a model file: neither a pickle (joblib.dump, pickle.dump)")
