"""Each flavor on real libraries and real files: save -> load -> predict, the signature it declares, its errors."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from conveyor.errors import ConveyorError, IntegrityError, InvalidInput, NotFound
from conveyor.flavors.function import FunctionFlavor
from conveyor.flavors.sklearn import SklearnFlavor
from conveyor.model import Model, guess_flavor

IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


class ThresholdClassifier(ClassifierMixin, BaseEstimator):
    """A custom class: skops must not import it without being told to trust it."""

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        self.threshold_ = float(np.median(np.asarray(X)[:, 0]))
        return self

    def predict(self, X):
        return self.classes_[(np.asarray(X)[:, 0] > self.threshold_).astype(int)]


@pytest.fixture(scope="module")
def iris() -> tuple[pd.DataFrame, np.ndarray]:
    X, y = load_iris(return_X_y=True, as_frame=True)
    return X.set_axis(IRIS_COLUMNS, axis=1), y.to_numpy()


@pytest.fixture(scope="module")
def regression() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"price": rng.normal(10, 2, 200), "promo": rng.uniform(0, 1, 200), "temp": rng.normal(20, 5, 200)})
    y = 3 * X["price"] - 4 * X["promo"] + 0.5 * X["temp"] + rng.normal(0, 0.1, 200)
    return X, y.to_numpy()


def _directory(tmp_path: Path, name: str = "artifact") -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


def _round_trip(flavor, source, tmp_path: Path, name: str = "artifact"):
    directory = _directory(tmp_path, name)
    meta = flavor.save(source, directory)
    predictor = flavor.load(directory, meta)
    return meta, predictor, flavor.signature(predictor, meta)


# --- sklearn ---------------------------------------------------------------------------------------------


def test_sklearn_classifier_round_trip_gives_labels_and_probabilities(iris, tmp_path):
    X, y = iris
    estimator = LogisticRegression(max_iter=500).fit(X.to_numpy(), y)
    meta, predictor, signature = _round_trip(SklearnFlavor(), estimator, tmp_path)

    assert meta["file"] == "model.joblib" and meta["format"] == "joblib"
    assert meta["estimator"] == "sklearn.linear_model._logistic.LogisticRegression"
    assert signature.input_names == ["f0", "f1", "f2", "f3"]
    assert [(f.name, f.type) for f in signature.outputs] == [
        ("prediction", "int"),
        ("proba_0", "float"),
        ("proba_1", "float"),
        ("proba_2", "float"),
    ]

    rows = X.iloc[[149, 0, 75, 3, 120]].set_axis(signature.input_names, axis=1)
    out = Model("iris", 1, "sklearn", signature, predictor).predict_frame(rows)
    assert list(out.columns) == signature.output_names
    np.testing.assert_array_equal(out["prediction"], estimator.predict(rows.to_numpy()))
    np.testing.assert_allclose(out.iloc[:, 1:].to_numpy(), estimator.predict_proba(rows.to_numpy()))

    one = predictor.predict(signature.validate_records([dict(zip(signature.input_names, X.iloc[0], strict=True))]))
    assert len(one) == 1 and one["prediction"].iloc[0] == 0


def test_sklearn_pipeline_with_feature_names_gets_its_columns_in_fitted_order(regression, tmp_path):
    X, y = regression
    pipeline = make_pipeline(StandardScaler(), Ridge()).fit(X, y)
    joblib.dump(pipeline, tmp_path / "pipe.joblib")
    meta, predictor, signature = _round_trip(SklearnFlavor(), str(tmp_path / "pipe.joblib"), tmp_path)

    assert meta["estimator"] == "sklearn.pipeline.Pipeline"
    assert signature.input_names == ["price", "promo", "temp"]
    assert {f.type for f in signature.inputs} == {"float"}
    assert [(f.name, f.type) for f in signature.outputs] == [("prediction", "float")]

    shuffled = X.iloc[:64][["temp", "price", "promo"]]
    out = predictor.predict(shuffled)
    assert list(out.columns) == ["prediction"] and len(out) == 64
    np.testing.assert_allclose(out["prediction"], pipeline.predict(X.iloc[:64]))


class TwoOutputs(BaseEstimator):
    """Two values per row: answered through the DataFrame path, never cut into columns by the fast one."""

    def fit(self, X, y):
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict(self, X):
        return np.column_stack([np.asarray(X)[:, 0], np.asarray(X)[:, 1] * 2])


def _estimators(iris, regression) -> dict[str, tuple[Any, pd.DataFrame]]:
    from sklearn.compose import make_column_transformer
    from sklearn.preprocessing import OneHotEncoder

    X, y = iris
    Xr, yr = regression
    array = X.set_axis([f"f{i}" for i in range(4)], axis=1)  # the names a model fitted on an array gets
    labels = np.where(y == 0, "setosa", "other")
    customers = pd.DataFrame({"city": ["a", "b", "a", "c"] * 10, "n": np.arange(40.0)})
    custom = ThresholdClassifier().fit(X.to_numpy(), y)
    custom.n_features_in_ = 4
    by_name = make_column_transformer((OneHotEncoder(), ["city"]), remainder="passthrough")
    return {
        "classifier on an array": (LogisticRegression(max_iter=500).fit(X.to_numpy(), y), array),
        "classifier with string labels": (LogisticRegression(max_iter=500).fit(X, labels), X),
        "regressor pipeline": (make_pipeline(StandardScaler(), Ridge()).fit(Xr, yr), Xr),
        "forest": (RandomForestRegressor(n_estimators=5, random_state=0).fit(Xr, yr), Xr),
        "custom classifier without predict_proba": (custom, array),
        "two values per row": (TwoOutputs().fit(X.to_numpy(), y), array),
        "columns selected by name": (make_pipeline(by_name, Ridge()).fit(customers, customers["n"] * 2), customers),
    }


@pytest.mark.parametrize("rows", [1, 7])
def test_the_dataframe_free_path_answers_exactly_as_the_dataframe_path(iris, regression, tmp_path, rows):
    flavor = SklearnFlavor()
    for i, (label, (estimator, source)) in enumerate(_estimators(iris, regression).items()):
        directory = _directory(tmp_path, f"m{i}")
        meta = flavor.save(estimator, directory)
        predictor = flavor.load(directory, meta)
        signature = flavor.signature(predictor, meta, source.head())
        model = Model(label, 1, "sklearn", signature, predictor)
        frame = signature.validate_frame(source.iloc[:rows])
        columns = {name: frame[name].to_numpy() for name in frame.columns}
        fast = model.predict_columns(columns, rows)
        slow = model.predict(frame)
        assert list(fast) == list(slow.columns), label
        for name in slow.columns:
            np.testing.assert_array_equal(np.asarray(fast[name]), slow[name].to_numpy(), err_msg=label)
    assert predictor.predict_columns(columns, rows) is None  # the last one selects columns by name


def test_sklearn_pickle_file_and_string_labels(iris, tmp_path):
    X, y = iris
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    estimator = LogisticRegression(max_iter=500).fit(X, labels)
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(estimator))
    meta, predictor, signature = _round_trip(SklearnFlavor(), tmp_path / "m.pkl", tmp_path)

    assert meta["format"] == "pickle" and meta["file"] == "model.pkl"
    assert signature.output_names == ["prediction", "proba_setosa", "proba_versicolor", "proba_virginica"]
    assert signature.outputs[0].type == "str"
    out = predictor.predict(X.iloc[[0, 60, 130]])
    assert out["prediction"].tolist() == estimator.predict(X.iloc[[0, 60, 130]]).tolist()


def test_sklearn_skops_file_round_trip(iris, tmp_path):
    X, y = iris
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    sio.dump(pipeline, tmp_path / "m.skops")
    meta, predictor, signature = _round_trip(SklearnFlavor(), str(tmp_path / "m.skops"), tmp_path)

    assert meta["format"] == "skops" and meta["file"] == "model.skops"
    assert signature.input_names == IRIS_COLUMNS
    out = predictor.predict(X)
    assert len(out) == len(X)
    np.testing.assert_array_equal(out["prediction"], pipeline.predict(X))


def test_sklearn_skops_file_needing_sklearn_classes_outside_skops_defaults_loads(regression, tmp_path):
    X, y = regression
    forest = RandomForestRegressor(n_estimators=3, random_state=0).fit(X, y)
    sio.dump(forest, tmp_path / "forest.skops")
    assert sio.get_untrusted_types(file=tmp_path / "forest.skops") == ["sklearn.tree._tree.Tree"]
    _, predictor, _ = _round_trip(SklearnFlavor(), str(tmp_path / "forest.skops"), tmp_path)
    np.testing.assert_allclose(predictor.predict(X.iloc[:10])["prediction"], forest.predict(X.iloc[:10]))


def test_sklearn_skops_file_with_untrusted_type_is_refused(iris, tmp_path):
    X, y = iris
    sio.dump(ThresholdClassifier().fit(X, y), tmp_path / "custom.skops")

    with pytest.raises(IntegrityError, match="ThresholdClassifier"):
        SklearnFlavor().save(str(tmp_path / "custom.skops"), _directory(tmp_path))

    planted = _directory(tmp_path, "planted")
    (planted / "model.skops").write_bytes((tmp_path / "custom.skops").read_bytes())
    with pytest.raises(IntegrityError, match="untrusted types"):
        SklearnFlavor().load(planted, {"file": "model.skops", "format": "skops"})


def test_skops_trusts_classes_from_trusted_packages_never_functions():
    from conveyor.flavors.sklearn import _trusted

    assert _trusted("sklearn.tree._tree.Tree") and _trusted("numpy.ndarray") and _trusted("builtins.slice")
    assert not _trusted("builtins.eval") and not _trusted("numpy.load") and not _trusted("scipy.io.loadmat")
    assert not _trusted("os.system") and not _trusted("numpy_evil.Thing") and not _trusted("sklearn.nope.Missing")


def test_sklearn_refuses_missing_files_and_files_that_are_not_models(iris, tmp_path):
    flavor = SklearnFlavor()
    with pytest.raises(NotFound, match="no scikit-learn model file"):
        flavor.save(str(tmp_path / "absent.joblib"), _directory(tmp_path, "a"))

    joblib.dump({"weights": [1, 2]}, tmp_path / "dict.joblib")
    with pytest.raises(ConveyorError, match="not a model with predict"):
        flavor.save(str(tmp_path / "dict.joblib"), _directory(tmp_path, "b"))

    (tmp_path / "junk.pkl").write_text("x0,x1\n1,2\n")
    with pytest.raises(ConveyorError) as exc:
        flavor.save(str(tmp_path / "junk.pkl"), _directory(tmp_path, "c"))
    assert str(exc.value).startswith(
        f"{tmp_path / 'junk.pkl'} is not a model file: neither a pickle (joblib.dump, pickle.dump) "
        "nor a skops file (skops.io.dump); it starts with b'x0,x1\\n1,2\\n'"
    )

    with pytest.raises(ConveyorError, match="not fitted"):
        flavor.save(LogisticRegression(), _directory(tmp_path, "d"))


@pytest.mark.parametrize(
    ("name", "dump", "fmt"),
    [
        ("reg.pkl", lambda m, p: joblib.dump(m, p), "joblib"),  # was "invalid load key"/"STACK_GLOBAL requires str"
        ("reg.pickle", lambda m, p: joblib.dump(m, p, compress=3), "joblib"),
        ("reg.joblib", lambda m, p: p.write_bytes(pickle.dumps(m)), "pickle"),
        ("reg.pkl", lambda m, p: sio.dump(m, p), "skops"),  # a skops file named .pkl
        ("reg.skops", lambda m, p: joblib.dump(m, p), "joblib"),
    ],
)
def test_sklearn_files_are_told_apart_by_content_not_extension(regression, tmp_path, name, dump, fmt):
    X, y = regression
    model = make_pipeline(StandardScaler(), Ridge()).fit(X, y)
    dump(model, tmp_path / name)
    meta, predictor, signature = _round_trip(SklearnFlavor(), str(tmp_path / name), tmp_path)
    assert meta["format"] == fmt and meta["file"] == f"model.{ {'pickle': 'pkl'}.get(fmt, fmt) }"
    assert signature.input_names == ["price", "promo", "temp"]
    np.testing.assert_allclose(predictor.predict(X.iloc[:5])["prediction"], model.predict(X.iloc[:5]))


@pytest.fixture(scope="module")
def customers() -> tuple[pd.DataFrame, np.ndarray, Any]:
    """A user's pipeline on a DataFrame: categories one-hot and ordinal, ints, floats, bools, text, a dropped id."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    rng = np.random.default_rng(3)
    n = 120
    X = pd.DataFrame(
        {
            "customer_id": np.arange(1000, 1000 + n),
            "plan": rng.choice(["basic", "pro", "team"], n),
            "region": rng.choice(["north", "south", "east"], n),
            "age": rng.integers(18, 70, n),
            "spend": rng.gamma(2.0, 30.0, n).round(2),
            "vip": rng.random(n) < 0.3,
            "seats": rng.choice([1, 5, 20], n),
            "note": rng.choice(["late payment", "happy", "asked for refund", ""], n),
        }
    )
    y = np.where((X["plan"] == "pro") | (X["spend"] > 80) | X["vip"], "churn", "stay")
    prep = ColumnTransformer(
        [
            ("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"]),
            ("region", OrdinalEncoder(), ["region"]),  # handle_unknown="error": an unknown region cannot be scored
            ("num", StandardScaler(), ["age", "spend"]),
            ("flags", "passthrough", ["vip"]),
            ("seats", OneHotEncoder(), ["seats"]),  # integer categories, and an unknown one fails the model
            ("text", TfidfVectorizer(), "note"),
        ],
        remainder="drop",  # customer_id
    )
    return X, y, Pipeline([("prep", prep), ("clf", LogisticRegression(max_iter=1000))]).fit(X, y)


def test_sklearn_pipeline_signature_comes_from_its_encoders_without_an_example(customers, tmp_path):
    X, _, pipeline = customers
    _, predictor, signature = _round_trip(SklearnFlavor(), pipeline, tmp_path)
    fields = {f.name: f for f in signature.inputs}
    assert signature.input_names == list(X.columns)
    assert {n: f.type for n, f in fields.items()} == {
        "customer_id": "object",
        "plan": "str",
        "region": "str",
        "age": "float",
        "spend": "float",
        "vip": "float",  # a passthrough column says nothing of its type: --example tells bool from float
        "seats": "int",
        "note": "str",
    }
    assert fields["plan"].choices is None  # handle_unknown="ignore": any plan is scored
    assert fields["region"].choices == ("east", "north", "south") and fields["seats"].choices == (1, 5, 20)
    assert not fields["customer_id"].required and "dropped" in fields["customer_id"].description

    rows = X.drop(columns=["customer_id"]).assign(vip=X["vip"].astype(int)).to_dict("records")
    out = predictor.predict(signature.validate_records(rows))
    assert out["prediction"].tolist() == pipeline.predict(X).tolist()
    with pytest.raises(InvalidInput, match="unknown region 'west'; known: 'east', 'north', 'south'"):
        signature.validate_records([{**rows[0], "region": "west"}])
    with pytest.raises(InvalidInput, match="unknown seats 7; known: 1, 5, 20"):
        signature.validate_records([{**rows[0], "seats": 7}])  # the model would raise ValueError: a 500


def test_sklearn_pipeline_signature_takes_the_example_dtypes(customers, tmp_path):
    X, _, pipeline = customers
    flavor = SklearnFlavor()
    directory = _directory(tmp_path)
    meta = flavor.save(pipeline, directory)
    predictor = flavor.load(directory, meta)
    signature = flavor.signature(predictor, meta, example=X.iloc[:5])
    types = {f.name: f.type for f in signature.inputs}
    assert types == {
        "customer_id": "object",
        "plan": "str",
        "region": "str",
        "age": "float",  # an int column feeding a scaler: any number is fine (12.5 is not refused later)
        "spend": "float",
        "vip": "bool",
        "seats": "int",
        "note": "str",
    }
    # the training rows themselves, as JSON would carry them (bools, ints, strings) and as a DataFrame
    records = X.to_dict("records")
    out = predictor.predict(signature.validate_records(records))
    assert out["prediction"].tolist() == pipeline.predict(X).tolist()
    np.testing.assert_allclose(
        predictor.predict(signature.validate_frame(X))["proba_churn"], pipeline.predict_proba(X)[:, 0]
    )


def test_sklearn_accepts_estimators_and_model_files():
    flavor = SklearnFlavor()
    assert flavor.accepts(LogisticRegression())
    assert flavor.accepts("models/m.joblib") and flavor.accepts(Path("m.PKL")) and flavor.accepts("m.skops")
    assert not flavor.accepts("model.py") and not flavor.accepts(print)
    assert guess_flavor("m.skops") == "sklearn"


# --- function --------------------------------------------------------------------------------------------

SCORED = """
    import pandas as pd

    SIGNATURE = {
        "inputs": [{"name": "x", "type": "float"}, {"name": "n", "type": "int", "min": 1, "max": 10}],
        "outputs": [{"name": "score", "type": "float"}],
    }


    def score(frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"score": frame["x"] * frame["n"]})
"""

PLAIN = """
    def predict(frame):
        return (frame["a"] + frame["b"]).to_numpy()
"""


def _write(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source))
    return path


def test_function_with_signature_round_trip(tmp_path):
    source = _write(tmp_path / "scoring.py", SCORED)
    meta, predictor, signature = _round_trip(FunctionFlavor(), f"{source}:score", tmp_path)

    assert meta == {"file": "model.py", "callable": "score"}
    assert signature.input_names == ["x", "n"] and signature.field("n").max == 10
    assert signature.output_names == ["score"]
    out = Model("scoring", 1, "function", signature, predictor).predict_records(
        [{"x": 1.5, "n": 2}, {"x": 2.0, "n": 3}, {"x": -1.0, "n": 1}]
    )
    assert out["score"].tolist() == [3.0, 6.0, -1.0]


def test_function_without_signature_uses_predict_and_needs_examples(tmp_path):
    source = _write(tmp_path / "adder.py", PLAIN)
    meta, predictor, signature = _round_trip(FunctionFlavor(), str(source), tmp_path)

    assert meta["callable"] == "predict" and signature is None
    out = predictor.predict(pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [10.0, 20.0, 30.0]}))
    assert list(out.columns) == ["prediction"] and out["prediction"].tolist() == [11.0, 22.0, 33.0]


def test_function_files_with_the_same_name_do_not_share_a_module(tmp_path):
    first = _directory(tmp_path, "one")
    second = _directory(tmp_path, "two")
    flavor = FunctionFlavor()
    flavor.save(_write(tmp_path / "a.py", "def predict(f):\n    return f['a'] * 0 + 1\n"), first)
    flavor.save(_write(tmp_path / "b.py", "def predict(f):\n    return f['a'] * 0 + 2\n"), second)
    frame = pd.DataFrame({"a": [5.0]})
    one = flavor.load(first, {"file": "model.py", "callable": "predict"})
    two = flavor.load(second, {"file": "model.py", "callable": "predict"})
    assert one.predict(frame).iloc[0, 0] == 1 and two.predict(frame).iloc[0, 0] == 2


def test_function_errors_are_one_clear_line(tmp_path):
    flavor = FunctionFlavor()
    source = _write(tmp_path / "adder.py", PLAIN)
    with pytest.raises(ConveyorError, match="defines no 'forecast'"):
        flavor.save(f"{source}:forecast", _directory(tmp_path, "a"))
    with pytest.raises(NotFound, match="no Python file"):
        flavor.save(str(tmp_path / "absent.py"), _directory(tmp_path, "b"))
    broken = _write(tmp_path / "broken.py", "import not_a_module_anywhere\n")
    with pytest.raises(ConveyorError, match="importing it failed: ModuleNotFoundError"):
        flavor.save(str(broken), _directory(tmp_path, "c"))
    constant = _write(tmp_path / "constant.py", "predict = 3\n")
    with pytest.raises(ConveyorError, match="not a function"):
        flavor.save(str(constant), _directory(tmp_path, "d"))
    with pytest.raises(ConveyorError, match=r"test_flavors\.py:_write"):
        flavor.save(_write, _directory(tmp_path, "e"))


def test_function_accepts_python_files_and_callables():
    flavor = FunctionFlavor()
    assert flavor.accepts("score.py") and flavor.accepts("dir/score.py:score") and flavor.accepts(len)
    assert not flavor.accepts("model.joblib")
    assert guess_flavor("score.py:score") == "function"


# --- mlflow ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow():
    pytest.importorskip("mlflow.sklearn")
    import mlflow

    return mlflow


@pytest.fixture(scope="module")
def sales() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(1)
    X = pd.DataFrame({"price": rng.normal(10, 2, 120), "stores": rng.integers(1, 50, 120)})
    return X, (X["price"] * X["stores"] > 250).astype(int).to_numpy()


@pytest.fixture(scope="module")
def mlflow_classifier(sales):
    X, y = sales
    return LogisticRegression(max_iter=500).fit(X, y)


def _save_mlflow(mlflow, model, X, path: Path) -> Path:
    from mlflow.models import infer_signature

    mlflow.sklearn.save_model(
        model, str(path), signature=infer_signature(X, model.predict(X)), pip_requirements=["scikit-learn"]
    )
    return path


def test_mlflow_local_model_directory_round_trip(mlflow, sales, mlflow_classifier, tmp_path):
    from conveyor.flavors.mlflow import MlflowFlavor

    X, _ = sales
    source = _save_mlflow(mlflow, mlflow_classifier, X, tmp_path / "exported")
    assert guess_flavor(str(source)) == "mlflow"
    meta, predictor, signature = _round_trip(MlflowFlavor(), source, tmp_path)

    assert meta["dir"] == "mlflow_model" and meta["loader_module"] == "mlflow.sklearn"
    assert "sklearn" in meta["flavors"] and meta["mlflow_version"] == mlflow.__version__
    assert [(f.name, f.type) for f in signature.inputs] == [("price", "float"), ("stores", "int")]
    assert [(f.name, f.type) for f in signature.outputs] == [("prediction", "int")]

    rows = X.iloc[[7, 3, 99, 0]]
    out = Model("sales", 1, "mlflow", signature, predictor).predict_frame(rows)
    assert list(out.columns) == ["prediction"]
    np.testing.assert_array_equal(out["prediction"], mlflow_classifier.predict(rows))


def test_mlflow_32_bit_columns_are_narrowed_before_mlflow_enforces_its_schema(mlflow, tmp_path):
    from conveyor.flavors.mlflow import MlflowFlavor

    X = pd.DataFrame({"ratio": np.linspace(0, 1, 40, dtype=np.float32), "count": np.arange(40, dtype=np.int32)})
    model = LogisticRegression().fit(X, (X["ratio"] > 0.5).astype(int))
    source = _save_mlflow(mlflow, model, X, tmp_path / "exported")
    _, predictor, signature = _round_trip(MlflowFlavor(), source, tmp_path)

    assert [(f.name, f.type) for f in signature.inputs] == [("ratio", "float"), ("count", "int")]
    rows = X.iloc[[36, 4, 20]]
    out = Model("narrow", 1, "mlflow", signature, predictor).predict_records(rows.to_dict("records"))
    assert out["prediction"].tolist() == model.predict(rows).tolist()


def test_mlflow_models_uri_from_a_local_registry(mlflow, sales, mlflow_classifier, tmp_path, monkeypatch):
    from conveyor.flavors.mlflow import MlflowFlavor

    # MLflow 3 keeps the file store only behind this opt-in; its SQL store needs alembic, absent here.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    try:
        X, _ = sales
        from mlflow.models import infer_signature

        with mlflow.start_run():
            mlflow.sklearn.log_model(
                mlflow_classifier,
                name="model",
                signature=infer_signature(X, mlflow_classifier.predict(X)),
                pip_requirements=["scikit-learn"],
                registered_model_name="sales",
            )
        mlflow.MlflowClient().set_registered_model_alias("sales", "production", "1")

        flavor = MlflowFlavor()
        assert flavor.accepts("models:/sales@production") and flavor.accepts("runs:/abc/model")
        for uri in ("models:/sales/1", "models:/sales@production"):
            meta, predictor, signature = _round_trip(flavor, uri, tmp_path, name=uri.replace("/", "_").replace(":", ""))
            assert meta["source"] == uri and signature.input_names == ["price", "stores"]
            out = predictor.predict(X.iloc[:5])
            np.testing.assert_array_equal(out["prediction"], mlflow_classifier.predict(X.iloc[:5]))

        with pytest.raises(NotFound, match="cannot fetch models:/sales/7"):
            flavor.save("models:/sales/7", _directory(tmp_path, "missing"))
    finally:
        mlflow.set_tracking_uri(previous)


def test_mlflow_refuses_missing_and_non_model_directories(mlflow, tmp_path):
    from conveyor.flavors.mlflow import MlflowFlavor

    flavor = MlflowFlavor()
    with pytest.raises(NotFound, match="no MLflow model directory"):
        flavor.save(tmp_path / "absent", _directory(tmp_path, "a"))
    plain = _directory(tmp_path, "plain")
    assert not flavor.accepts(plain)
    with pytest.raises(ConveyorError, match="no MLmodel file"):
        flavor.save(plain, _directory(tmp_path, "b"))


def test_old_pickle_protocols_and_any_file_name_are_sklearn_models(regression, tmp_path):
    """`pickle.dump(m, f, protocol=0)` was refused as "not a model file", and `models add r reg.sav` could not tell
    the flavor: a model file is known by its content."""
    import pickle

    from conveyor.model import guess_flavor

    X, y = regression
    model = make_pipeline(StandardScaler(), Ridge()).fit(X, y)
    for protocol in (0, 1):
        path = tmp_path / f"reg-{protocol}.sav"
        with path.open("wb") as f:
            pickle.dump(model, f, protocol=protocol)
        assert guess_flavor(str(path)) == "sklearn"
        meta, predictor, _ = _round_trip(SklearnFlavor(), str(path), tmp_path, name=f"out-{protocol}")
        assert meta["format"] == "pickle"
        np.testing.assert_allclose(predictor.predict(X.iloc[:3])["prediction"], model.predict(X.iloc[:3]))


def test_a_text_file_is_not_taken_for_an_old_pickle(tmp_path):
    """A CSV starting with `c` looked like protocol 0's GLOBAL opcode, and was unpickled."""
    path = tmp_path / "rows.csv"
    path.write_text("customer_id,plan\n1,pro\n")
    with pytest.raises(ConveyorError, match="is not a model file: neither a pickle"):
        SklearnFlavor().save(str(path), _directory(tmp_path))
