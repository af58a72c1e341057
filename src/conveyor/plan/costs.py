"""What each way of serving costs a month for a traffic profile, from measured latencies and the price table.

Hour by hour of the profile: functions bill every request (Lambda: duration in 1 ms steps times memory;
Cloud Run functions: an instance per request, 100 ms steps), containers bill instances (Cloud Run services
while serving, shared by concurrent requests; GKE Autopilot pods always, as many as the seed's HPA keeps: 80% CPU
between 2 and 5 replicas). Free tiers are taken off once a month. Arrivals are taken as Poisson: a request
finds no warm instance when the gap before it is longer than the provider keeps idle instances, so the
cold starts in an hour at rate r are r * 3600 * exp(-r * idle). A p99 objective is met when the warm p99 is
within it and at most 1% of requests miss it (cold starts, or hours where the containers are saturated).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

from conveyor.plan.prices import Prices
from conveyor.plan.traffic import Profile

P99_SHARE = 0.01


@dataclass(frozen=True)
class Measured:
    """The model measured where it will run: the real server, the real function runtime."""

    capacity_per_vcpu: float  # requests/s one vCPU of the server answers (CPU-bound, batching on)
    server_p50_ms: float  # one request's latency on an idle server
    server_p99_ms: float  # p99 at the measured load
    function_warm_ms: float  # p50 of warm invocations
    function_p99_ms: float
    cold_start_s: float  # a function instance's start to its first answer (model load included)
    container_start_s: float  # the server's start to ready
    function_memory_mb: int  # what the function is given (and billed for)


@dataclass(frozen=True)
class Containers:
    """The container shape priced: `conveyor deploy k8s`'s pod (CPU request, memory) and its HPA."""

    pod_vcpu: float = 0.5
    pod_gib: float = 1.0
    min_replicas: int = 2
    max_replicas: int = 5
    cpu_target: float = 0.8


@dataclass(frozen=True)
class Option:
    name: str
    monthly: float
    peak_instances: int
    cold_starts_per_day: float
    past_objective: float  # share of the month's requests answered later than the objective
    meets_objective: bool
    note: str = ""

    @property
    def family(self) -> str:
        """The seed's question is between two families: serverless functions and (elastic) containers."""
        return "functions" if "function" in self.name.lower() and "container" not in self.name.lower() else "containers"


def cold_starts_per_hour(rps: float, idle_seconds: float) -> float:
    """Requests in an hour arriving after an idle gap longer than `idle_seconds` (Poisson arrivals)."""
    return rps * 3600 * math.exp(-rps * idle_seconds) if rps > 0 else 0.0


def _steps(seconds: float, step_ms: float) -> float:
    """`seconds` rounded up to the provider's billing step."""
    step = step_ms / 1000
    return math.ceil(seconds / step - 1e-9) * step


def _repeats(profile: Profile, prices: Prices) -> float:
    """How many times the profile's day (or week) fits in the table's month."""
    return prices["table"]["hours_per_month"] / len(profile.hourly_rps)


def _verdict(requests: float, late: float, warm_p99_ms: float, objective_ms: float) -> tuple[float, bool]:
    share = late / requests if requests else 0.0
    return share, warm_p99_ms <= objective_ms and share <= P99_SHARE


def _functions(
    name: str,
    section: dict,
    profile: Profile,
    m: Measured,
    prices: Prices,
    objective_ms: float,
    bill: Callable[[float, float], float],
) -> Option:
    """A function service: `bill(requests, colds)` prices a month's requests and cold starts."""
    reps = _repeats(profile, prices)
    requests = sum(r * 3600 for r in profile.hourly_rps) * reps
    colds = sum(cold_starts_per_hour(r, section["idle_seconds"]) for r in profile.hourly_rps) * reps
    late = colds if m.cold_start_s * 1000 + m.function_warm_ms > objective_ms else 0.0
    share, meets = _verdict(requests, late, m.function_p99_ms, objective_ms)
    peak = math.ceil(profile.peak * m.function_warm_ms / 1000) if profile.peak else 0
    return Option(
        name,
        bill(requests, colds),
        max(peak, 1 if profile.peak else 0),
        colds / reps / (len(profile.hourly_rps) / 24),
        share,
        meets,
    )


def aws_lambda(profile: Profile, m: Measured, prices: Prices, objective_ms: float) -> Option:
    s = prices["lambda"]
    gb = m.function_memory_mb / 1024

    def bill(requests: float, colds: float) -> float:
        gb_seconds = requests * _steps(m.function_warm_ms / 1000, s["billing_ms"]) * gb + colds * m.cold_start_s * gb
        return (
            max(0.0, requests - s["free_requests"]) * s["per_request"]
            + max(0.0, gb_seconds - s["free_gb_seconds"]) * s["per_gb_second"]
        )

    return _functions("Lambda (function)", s, profile, m, prices, objective_ms, bill)


def cloud_run_functions(profile: Profile, m: Measured, prices: Prices, objective_ms: float) -> Option:
    s = prices["cloud_run_functions"]
    gib = m.function_memory_mb / 1024

    def bill(requests: float, colds: float) -> float:
        seconds = requests * _steps(m.function_warm_ms / 1000, s["billing_ms"])
        seconds += colds * _steps(m.cold_start_s, s["billing_ms"])
        return (
            max(0.0, requests - s["free_requests"]) * s["per_request"]
            + max(0.0, seconds * s["vcpu"] - s["free_vcpu_seconds"]) * s["per_vcpu_second"]
            + max(0.0, seconds * gib - s["free_gib_seconds"]) * s["per_gib_second"]
        )

    return _functions("Cloud Run functions", s, profile, m, prices, objective_ms, bill)


def cloud_run_service(profile: Profile, m: Measured, prices: Prices, objective_ms: float) -> Option:
    """The container on Cloud Run: instances scale with load (and to zero), billed while serving."""
    s = prices["cloud_run_service"]
    reps = _repeats(profile, prices)
    capacity = m.capacity_per_vcpu * s["vcpu"]
    latency = m.server_p50_ms / 1000
    requests = seconds = colds = 0.0
    peak = 0
    for r in profile.hourly_rps:
        if r <= 0:
            continue
        n = max(1, math.ceil(r / capacity), math.ceil(r * latency / s["concurrency"]))
        peak = max(peak, n)
        busy = 1 - math.exp(-(r / n) * latency)  # an instance is billed while at least one request is in it
        hour_colds = cold_starts_per_hour(r, s["idle_seconds"])
        seconds += 3600 * n * busy + hour_colds * m.container_start_s
        colds += hour_colds
        requests += r * 3600
    requests, seconds, colds = requests * reps, seconds * reps, colds * reps
    monthly = (
        max(0.0, requests - s["free_requests"]) * s["per_request"]
        + max(0.0, seconds * s["vcpu"] - s["free_vcpu_seconds"]) * s["per_vcpu_second"]
        + max(0.0, seconds * s["gib"] - s["free_gib_seconds"]) * s["per_gib_second"]
    )
    late = colds if m.container_start_s * 1000 + m.server_p50_ms > objective_ms else 0.0
    share, meets = _verdict(requests, late, m.server_p99_ms, objective_ms)
    per_day = colds / reps / (len(profile.hourly_rps) / 24)
    return Option("Cloud Run service (container)", monthly, peak, per_day, share, meets)


def gke_autopilot(
    profile: Profile, m: Measured, prices: Prices, objective_ms: float, pods: Containers = Containers()
) -> Option:
    """The seed's deployment: pods billed on their requests, as many as the HPA keeps, never fewer than its min."""
    s = prices["gke_autopilot"]
    reps = _repeats(profile, prices)
    pod_capacity = m.capacity_per_vcpu * pods.pod_vcpu
    pod_hour = pods.pod_vcpu * s["per_vcpu_hour"] + pods.pod_gib * s["per_gib_hour"]
    pod_hours = late = requests = 0.0
    peak = 0
    for r in profile.hourly_rps:
        wanted = math.ceil(r / (pods.cpu_target * pod_capacity) - 1e-9) if r > 0 else 0
        replicas = min(max(wanted, pods.min_replicas), pods.max_replicas)
        peak = max(peak, replicas)
        pod_hours += replicas
        requests += r * 3600
        if r > pods.max_replicas * pod_capacity:  # more than the largest deployment answers: requests queue
            late += r * 3600
    cluster = max(0.0, s["cluster_per_hour"] * prices["table"]["hours_per_month"] - s["free_cluster_credit"])
    monthly = pod_hours * reps * pod_hour + cluster
    share, meets = _verdict(requests * reps, late * reps, m.server_p99_ms, objective_ms)
    note = f"saturated above {pods.max_replicas * pod_capacity:,.0f} req/s" if late else ""
    return Option(
        f"GKE Autopilot (HPA {pods.min_replicas}-{pods.max_replicas})", monthly, peak, 0.0, share, meets, note
    )


OPTIONS = (aws_lambda, cloud_run_functions, cloud_run_service, gke_autopilot)


def compare(profile: Profile, m: Measured, prices: Prices, objective_ms: float) -> list[Option]:
    return [option(profile, m, prices, objective_ms) for option in OPTIONS]


def best(options: list[Option]) -> Option | None:
    """The cheapest option that meets the objective, or None."""
    meeting = [o for o in options if o.meets_objective]
    return min(meeting, key=lambda o: o.monthly) if meeting else None


@dataclass(frozen=True)
class Flip:
    """Below `mean_rps` (the profile's mean, its shape kept) `before` is the cheaper family, above it `after`."""

    mean_rps: float
    before: str
    after: str
    best_before: str
    best_after: str


def flips(profile: Profile, m: Measured, prices: Prices, objective_ms: float) -> list[Flip]:
    """Mean traffic levels (the profile's shape scaled, 0.001x to 10,000x) where the answer to the seed's
    question changes: functions or containers (or neither meets the objective)."""
    if profile.mean <= 0:
        return []

    def chosen(factor: float) -> Option | None:
        return best(compare(profile.scaled(factor), m, prices, objective_ms))

    def winner(factor: float) -> str:
        option = chosen(factor)
        return option.family if option else "neither"

    def name(factor: float) -> str:
        option = chosen(factor)
        return option.name if option else "none meets the objective"

    grid = [10 ** (k / 20) for k in range(-60, 81)]
    out = []
    previous = winner(grid[0])
    for lo, hi in itertools.pairwise(grid):
        current = winner(hi)
        if current != previous:
            a, b = lo, hi
            for _ in range(30):  # bisect on a log scale to 0.1%
                mid = math.sqrt(a * b)
                if winner(mid) == previous:
                    a = mid
                else:
                    b = mid
                if b / a < 1.001:
                    break
            out.append(Flip(profile.mean * b, previous, current, name(a), name(b)))
            previous = current
    return out
