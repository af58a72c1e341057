"""What `conveyor plan` prints and plots."""

from __future__ import annotations

from pathlib import Path

import click

from conveyor.plan.costs import Flip, Measured, Option, best, compare
from conveyor.plan.prices import Prices
from conveyor.plan.traffic import Profile


def _money(x: float) -> str:
    return f"${x:,.2f}"


def _share(x: float) -> str:
    return "0" if x == 0 else f"{x:.2%}" if x >= 0.0001 else "<0.01%"


def print_report(
    model: str,
    traffic: Profile,
    m: Measured,
    prices: Prices,
    objective_ms: float,
    options: list[Option],
    chosen: Option | None,
    flipped: list[Flip],
) -> None:
    """A plain table (it goes into tickets and docs as it is), then the answer and where it flips."""
    hours = prices["table"]["hours_per_month"]
    click.echo(
        f"traffic: mean {traffic.mean:,.3g} req/s, peak {traffic.peak:,.3g} req/s, "
        f"{traffic.requests_per_month(hours) / 1e6:,.3g}M requests a month; objective p99 <= {objective_ms:g} ms"
    )
    click.echo(
        f"measured here: server {m.capacity_per_vcpu:,.0f} req/s per vCPU (p50 {m.server_p50_ms:.1f} ms idle, "
        f"p99 {m.server_p99_ms:.1f} ms under load, ready in {m.container_start_s:.1f}s); function cold start "
        f"{m.cold_start_s:.2f}s, warm p50 {m.function_warm_ms:.1f} ms, p99 {m.function_p99_ms:.1f} ms"
    )
    click.echo(f"prices: {prices.origin}")
    header = ("option", "$/month", "at peak", "cold/day", "past p99", "meets")
    rows = [
        (
            o.name,
            _money(o.monthly),
            str(o.peak_instances),
            f"{o.cold_starts_per_day:,.1f}",
            _share(o.past_objective),
            ("yes" if o.meets_objective else "no") + (f" ({o.note})" if o.note else ""),
        )
        for o in options
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    if chosen is None:
        click.echo(f"recommendation: none meets p99 <= {objective_ms:g} ms; relax --p99-ms or make the model faster")
    else:
        cheaper = sorted(o.monthly for o in options if o.meets_objective and o is not chosen)
        margin = f", {_money(cheaper[0] - chosen.monthly)} a month less than the next" if cheaper else ""
        click.echo(f"recommendation: {chosen.name} at {_money(chosen.monthly)} a month{margin}")
    for flip in flipped:
        click.echo(
            f"the answer flips at a mean of {flip.mean_rps:,.3g} req/s ({flip.mean_rps * 3600 * hours / 1e6:,.3g}M "
            f"requests a month, same daily shape): {flip.before} ({flip.best_before}) below, {flip.after} "
            f"({flip.best_after}) above"
        )
    if not flipped:
        click.echo("the answer does not change between 1/1000 and 10,000 times this traffic")


def write_plot(
    path: Path, traffic: Profile, m: Measured, prices: Prices, objective_ms: float, flipped: list[Flip]
) -> None:
    """Monthly cost of each option against mean traffic (the profile's shape scaled), log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factors = [10 ** (k / 20) for k in range(-60, 81)]
    series: dict[str, list[float | None]] = {}
    for factor in factors:
        for option in compare(traffic.scaled(factor), m, prices, objective_ms):
            # an option that misses the objective is not drawn there: it is no answer at that traffic
            series.setdefault(option.name, []).append(max(option.monthly, 0.01) if option.meets_objective else None)
    means = [traffic.mean * f for f in factors] if traffic.mean > 0 else factors
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for name, costs in series.items():
        ax.plot(means, [c if c is not None else float("nan") for c in costs], label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    if traffic.mean > 0:
        ax.axvline(traffic.mean, color="grey", linestyle="--", linewidth=1)
        chosen = best(compare(traffic, m, prices, objective_ms))
        label = f"your traffic: {chosen.name if chosen else 'none meets the objective'}"
        ax.annotate(label, xy=(traffic.mean, 0.98), xycoords=("data", "axes fraction"), xytext=(4, -4),
                    textcoords="offset points", fontsize=8, va="top")  # fmt: skip
    for flip in flipped:
        ax.axvline(flip.mean_rps, color="black", linestyle=":", linewidth=1)
    ax.set_xlabel("mean requests per second (your profile's daily shape)")
    ax.set_ylabel("USD per month")
    ax.set_title(
        f"Serverless or containers: p99 <= {objective_ms:g} ms (dotted: where the answer flips); "
        f"prices checked {prices.checked}",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
