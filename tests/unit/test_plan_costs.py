"""`conveyor plan`'s arithmetic against cases worked out by hand from the shipped price table."""

from __future__ import annotations

import math

import pytest

from conveyor.errors import InvalidInput
from conveyor.plan.costs import (
    Measured,
    aws_lambda,
    best,
    cloud_run_functions,
    cloud_run_service,
    cold_starts_per_hour,
    compare,
    flips,
    gke_autopilot,
)
from conveyor.plan.prices import load_prices
from conveyor.plan.traffic import Profile

PRICES = load_prices()
HOURS = 730
M = Measured(
    capacity_per_vcpu=200.0,
    server_p50_ms=4.0,
    server_p99_ms=20.0,
    function_warm_ms=5.0,
    function_p99_ms=9.0,
    cold_start_s=1.2,
    container_start_s=3.0,
    function_memory_mb=1024,
)


def test_the_table_is_dated_and_names_its_sources():
    assert PRICES.checked == "2026-11-30"
    for section in ("lambda", "cloud_run_functions", "cloud_run_service", "gke_autopilot"):
        assert PRICES[section]["sources"] and all(s.startswith("https://") for s in PRICES[section]["sources"])


def test_a_constant_load_on_lambda():
    # 10 req/s all month: 26,280,000 requests; 5 ms at 1 GB = 131,400 GB-s, inside the 400,000 free
    option = aws_lambda(Profile.constant(10), M, PRICES, objective_ms=100)
    assert option.monthly == pytest.approx((10 * 3600 * HOURS - 1_000_000) * 0.0000002)
    assert option.monthly == pytest.approx(5.056)
    assert option.cold_starts_per_day == pytest.approx(0, abs=1e-9) and option.meets_objective
    # at 100 req/s the duration passes the free tier: 262.8M requests x 5 ms x 1 GB = 1,314,000 GB-s
    busy = aws_lambda(Profile.constant(100), M, PRICES, objective_ms=100)
    requests = 100 * 3600 * HOURS
    assert busy.monthly == pytest.approx(
        (requests - 1_000_000) * 0.0000002 + (requests * 0.005 - 400_000) * 0.0000166667
    )


def test_cloud_run_functions_bill_each_request_in_100_ms_steps():
    slow = Measured(**{**M.__dict__, "function_warm_ms": 101.0})  # billed as 200 ms
    option = cloud_run_functions(Profile.constant(10), slow, PRICES, objective_ms=1000)
    requests = 10 * 3600 * HOURS
    seconds = requests * 0.2
    expected = (requests - 2_000_000) * 0.0000004 + (seconds - 180_000) * 0.000024 + (seconds - 360_000) * 0.0000025
    assert option.monthly == pytest.approx(expected)


def test_a_daily_peak_on_gke_keeps_the_hpa_minimum():
    profile = Profile.daily_peak(peak=50, mean=10, busy_hours=4)
    assert profile.hourly_rps.count(50.0) == 4 and profile.hourly_rps.count(2.0) == 20 and profile.mean == 10
    # a pod (0.5 vCPU at 200 req/s per vCPU) answers 100 req/s, the HPA aims at 80: one pod would do, two are kept
    option = gke_autopilot(profile, M, PRICES, objective_ms=100)
    assert option.peak_instances == 2
    pod_hour = 0.5 * 0.0445 + 1.0 * 0.0049225
    assert option.monthly == pytest.approx(2 * HOURS * pod_hour)  # the cluster fee is inside the free credit
    assert option.meets_objective and option.cold_starts_per_day == 0


def test_a_peak_beyond_five_replicas_is_saturated_and_misses_the_objective():
    weak = Measured(**{**M.__dict__, "capacity_per_vcpu": 20.0})  # a pod answers 10 req/s, five answer 50
    profile = Profile.daily_peak(peak=60, mean=12, busy_hours=4)
    option = gke_autopilot(profile, weak, PRICES, objective_ms=100)
    assert option.peak_instances == 5 and "saturated above 50 req/s" in option.note
    assert option.past_objective == pytest.approx(4 * 60 / (24 * 12))
    assert not option.meets_objective


def test_below_the_free_tiers_functions_cost_nothing_and_win():
    profile = Profile.constant(0.1)  # 262,800 requests a month
    options = compare(profile, M, PRICES, objective_ms=2000)
    by_name = {o.name: o for o in options}
    assert by_name["Lambda (function)"].monthly == 0
    assert by_name["Cloud Run functions"].monthly == 0
    assert by_name["GKE Autopilot (HPA 2-5)"].monthly == pytest.approx(2 * HOURS * (0.5 * 0.0445 + 0.0049225))
    assert best(options).monthly == 0


def test_sparse_traffic_cold_starts_push_requests_past_the_objective():
    rate = 1 / 600  # one request every 10 minutes, Lambda keeps an idle instance 10 minutes
    assert cold_starts_per_hour(rate, 600) == pytest.approx(6 * math.exp(-1))
    option = aws_lambda(Profile.constant(rate), M, PRICES, objective_ms=500)  # 1.2 s cold start > 500 ms
    assert option.past_objective == pytest.approx(math.exp(-1))
    assert option.cold_starts_per_day == pytest.approx(24 * 6 * math.exp(-1))
    assert not option.meets_objective
    assert aws_lambda(Profile.constant(rate), M, PRICES, objective_ms=2000).meets_objective


def test_cloud_run_service_instances_follow_the_load():
    option = cloud_run_service(Profile.constant(450), M, PRICES, objective_ms=100)
    assert option.peak_instances == 3  # 200 req/s per 1-vCPU instance


def test_the_answer_flips_where_the_costs_cross():
    profile = Profile.daily_peak(peak=20, mean=5, busy_hours=6)
    found = flips(profile, M, PRICES, objective_ms=100)
    assert found, "no flip between 0.001x and 10,000x of the traffic"
    for flip in found:
        assert flip.before != flip.after
        factor = flip.mean_rps / profile.mean
        below = best(compare(profile.scaled(factor * 0.99), M, PRICES, 100))
        above = best(compare(profile.scaled(factor * 1.01), M, PRICES, 100))
        assert (below.family, below.name) == (flip.before, flip.best_before)
        assert (above.family, above.name) == (flip.after, flip.best_after)
    # functions at low traffic; GKE's pods once they are busy enough, until five of them are saturated
    assert found[0].before == "functions"
    assert ("functions", "GKE Autopilot (HPA 2-5)") in [(f.before, f.best_after) for f in found]
    assert found[-1].best_before == "GKE Autopilot (HPA 2-5)" and found[-1].after == "functions"


def test_profiles_refuse_what_cannot_be_a_day():
    with pytest.raises(InvalidInput, match="already average"):
        Profile.daily_peak(peak=100, mean=10, busy_hours=4)
    with pytest.raises(InvalidInput, match="24 \\(a day\\) or 168"):
        Profile((1.0,) * 23)
    with pytest.raises(InvalidInput, match=">= 0"):
        Profile((-1.0,) * 24)


def test_a_profile_file_and_a_prices_file(tmp_path):
    path = tmp_path / "hours.txt"
    path.write_text("# requests per second, hour by hour\n" + "\n".join(["1, 2"] * 12) + "\n")
    assert Profile.from_file(path).hourly_rps == (1.0, 2.0) * 12
    path.write_text("1\nlots\n")
    with pytest.raises(InvalidInput, match="line 2: 'lots' is not a request rate"):
        Profile.from_file(path)
    prices = tmp_path / "prices.toml"
    prices.write_text("[lambda]\nper_request = 0.0000004\n")
    assert load_prices(prices)["lambda"]["per_request"] == 0.0000004
    assert load_prices(prices)["lambda"]["per_gb_second"] == 0.0000166667
    prices.write_text("[lambda]\nper_reqest = 1\n")
    with pytest.raises(InvalidInput, match="has no key 'per_reqest'"):
        load_prices(prices)
