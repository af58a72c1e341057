"""A CSV row whose field count differs from the header's is refused by every path, never scored shifted.

The real server over HTTP and `conveyor predict` in a subprocess; batch's rejects are in test_batch.py.
"""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import assert_one_line_error, conveyor, start_server

pytestmark = pytest.mark.integration

CSV = {"content-type": "text/csv"}


@pytest.fixture(scope="module")
def iris_server(store_dir, tmp_path_factory):
    server = start_server(store_dir, "iris", tmp_path_factory.mktemp("server"))
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"x0,x1,x2,x3\n-10,-10,1,1,1,1\n", "CSV body: line 2: expected 4 fields, saw 6"),  # was 200, shifted
        (b"x0,x1,x2,x3\n1,2,3,4\n1,2,3,4,5\n", "CSV body: line 3: expected 4 fields, saw 5"),
        (b"x0,x1,x2,x3\n1,2,3,4,\n", "CSV body: line 2: expected 4 fields, saw 5"),  # was 200, field dropped
        (b"x0,x1,x2,x3\n1,2,3\n", "CSV body: line 2: expected 4 fields, saw 3"),
        (b"x0,x1,x2,x0\n1,2,3,4\n", "CSV body: duplicate column name(s) ['x0'] in the header"),
    ],
)
def test_http_refuses_a_csv_line_with_its_number_and_counts(iris_server, body, message):
    with iris_server.client() as client:
        response = client.post("/predict", content=body, headers=CSV)
        assert response.status_code == 400, response.text
        assert response.json()["message"] == message


def test_http_reads_quoted_csv_fields_as_pandas_does(iris_server, iris_model):
    est, X = iris_model
    body = '\ufeff"x0",x1,x2,x3\r\n' + "".join(f'"{a}",{b},{c},{d}\r\n' for a, b, c, d in X.iloc[:3].to_numpy())
    with iris_server.client() as client:
        response = client.post("/predict", content=body.encode(), headers=CSV)
        assert response.status_code == 200, response.text
        got = [p["prediction"] for p in response.json()["predictions"]]
    assert got == est.predict(X.iloc[:3]).tolist()


def test_predict_refuses_a_file_whose_rows_carry_an_extra_field(tmp_path, store_dir, iris_model):
    _, X = iris_model
    rows = X.iloc[:50].assign(id=range(50))
    text = rows.to_csv(index=False)
    lines = text.splitlines()
    lines[1:] = [line + ",7" for line in lines[1:]]  # one extra field on every row: pandas shifted them all
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    args = ["--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv"), "--store", str(store_dir)]
    proc = conveyor("predict", "iris", *args, check=False)
    assert_one_line_error(proc, 2, "in.csv: line 2: expected 5 fields, saw 6 (and 49 more bad lines)")
    assert not (tmp_path / "out.csv").exists()

    rows.to_csv(tmp_path / "in.csv", index=False)  # the same rows, well formed: scored in place
    conveyor("predict", "iris", *args)
    out = pd.read_csv(tmp_path / "out.csv")
    assert out["id"].tolist() == list(range(50))
    pd.testing.assert_series_equal(out["x0"], rows["x0"].reset_index(drop=True), check_exact=False)
