"""`conveyor plan` measures the real server and function, then prices a traffic profile."""

from __future__ import annotations

import re

import pytest

from tests.conftest import assert_one_line_error, conveyor

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OPTIONS = ("Lambda (function)", "Cloud Run functions", "Cloud Run service (container)", "GKE Autopilot (HPA 2-5)")


def test_plan_measures_the_model_and_answers_with_a_table_a_recommendation_and_a_plot(store_dir, tmp_path):
    plot = tmp_path / "plan.png"
    done = conveyor(
        "plan", "sales", "--store", str(store_dir), "--peak", "30", "--mean", "10", "--busy-hours", "6",
        "--p99-ms", "800", "--seconds", "2", "--plot", str(plot),
    )  # fmt: skip
    out = done.stdout
    print(out)
    measured = re.search(r"server ([\d,]+) req/s per vCPU .* function cold start ([\d.]+)s, warm p50 ([\d.]+) ms", out)
    assert measured, out
    capacity, cold, warm = float(measured[1].replace(",", "")), float(measured[2]), float(measured[3])
    assert capacity > 10 and 0.1 < cold < 30 and 0 < warm < 500
    for name in OPTIONS:
        assert re.search(rf"^{re.escape(name)}\s+\$[\d,.]+\s+\d+\s+[\d,.]+\s+\S+\s+(yes|no)", out, re.M), name
    assert re.search(r"^recommendation: .+ at \$[\d,.]+ a month", out, re.M), out
    assert re.search(
        r"^the answer flips at a mean of [\d.,]+ req/s .*: (functions|containers|neither) \(.+\) below", out, re.M
    ), out
    assert "prices: prices.toml (checked 2026-11-30)" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give the traffic one way"),
        (["--rps", "5", "--peak", "9", "--mean", "1"], "give the traffic one way"),
        (["--peak", "10"], "--peak needs --mean"),
        (["--peak", "10", "--mean", "5", "--busy-hours", "20"], "already average"),
        (["--rps", "-1"], "--rps must be >= 0"),
    ],
)
def test_plan_refuses_a_traffic_it_cannot_price_in_one_line(store_dir, args, message):
    assert_one_line_error(conveyor("plan", "sales", "--store", str(store_dir), *args, check=False), 2, message)
