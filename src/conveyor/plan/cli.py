"""`conveyor plan NAME`: serverless functions or containers for a traffic profile, from measurements."""

from __future__ import annotations

from pathlib import Path

import click

from conveyor.cli_options import STORE_OPTION
from conveyor.errors import InvalidInput


@click.command("plan")
@click.argument("model", metavar="NAME[:VERSION|@ALIAS]")
@STORE_OPTION
@click.option("--rps", type=float, default=None, help="A constant load: requests per second, all day.")
@click.option("--peak", type=float, default=None, help="The busy hours' rate, requests/s (with --mean, --busy-hours).")
@click.option("--mean", type=float, default=None, help="The day's average rate, requests/s (with --peak).")
@click.option("--busy-hours", type=int, default=8, show_default=True, help="Hours a day at --peak.")
@click.option(
    "--profile",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="A file of hourly request rates (req/s): 24 values for a day or 168 for a week, one per line or "
    "comma-separated; '#' starts a comment.",
)
@click.option(
    "--p99-ms",
    type=click.FloatRange(min=1),
    default=500.0,
    show_default=True,
    help="Latency objective: 99% of requests answered within this many milliseconds. An option that misses it "
    "(warm p99 above it, or more than 1% of requests slowed past it by cold starts or saturation) is not "
    "recommended.",
)
@click.option(
    "--memory",
    type=click.IntRange(128, 10240),
    default=1024,
    show_default=True,
    help="Memory a function instance is given, in MB (billed per GB-second).",
)
@click.option(
    "--prices",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="A TOML file whose keys replace the shipped price table's (see conveyor/data/prices.toml).",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=1),
    default=5.0,
    show_default=True,
    help="How long the server is loaded to measure its capacity.",
)
@click.option(
    "--concurrency", type=click.IntRange(1, 256), default=4, show_default=True, help="Clients loading the server."
)
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write a PNG of monthly cost against traffic for each option.")  # fmt: skip
def plan(model, store, rps, peak, mean, busy_hours, profile, p99_ms, memory, prices, seconds, concurrency, plot):
    """Serverless functions or containers for this model's traffic: measured, then priced.

    \b
    It measures the model where it will run (about a minute):
      - the real server (`conveyor serve`, one worker) under load: requests one vCPU answers, and the p99;
      - the function `conveyor deploy function` writes, under functions-framework: its cold start
        (process start to first answer, model load included) and warm latency.
    Then it prices the traffic profile a month on Lambda, Cloud Run functions, a Cloud Run service and
    GKE Autopilot with the seed's autoscaling (HPA at 80% CPU, 2 to 5 pods of `deploy k8s`'s size), from
    the dated price table shipped with Conveyor (--prices overrides it), and prints each option's monthly
    cost, instances at peak, cold starts per day and the share of requests they push past --p99-ms,
    which option to choose, and the traffic levels where that answer flips.

    \b
    Give the traffic one way:
      conveyor plan sales --rps 5
      conveyor plan sales --peak 40 --mean 12 --busy-hours 6
      conveyor plan sales --profile hourly.txt --p99-ms 300 --plot plan.png
    """
    from conveyor.plan.costs import best, compare, flips
    from conveyor.plan.measure import measure
    from conveyor.plan.prices import load_prices
    from conveyor.plan.report import print_report, write_plot
    from conveyor.plan.traffic import Profile

    given = [name for name, value in (("--rps", rps), ("--peak", peak), ("--profile", profile)) if value is not None]
    if len(given) != 1:
        raise InvalidInput(
            "give the traffic one way: --rps N, or --peak N --mean N [--busy-hours H], or --profile FILE"
        )
    if mean is not None and peak is None:
        raise InvalidInput("--mean goes with --peak")
    if peak is not None:
        if mean is None:
            raise InvalidInput("--peak needs --mean: the day's average request rate")
        traffic = Profile.daily_peak(peak, mean, busy_hours)
    elif profile is not None:
        traffic = Profile.from_file(profile)
    else:
        if rps < 0:
            raise InvalidInput(f"--rps must be >= 0, got {rps:g}")
        traffic = Profile.constant(rps)
    table = load_prices(prices)
    from rich.console import Console

    console = Console(stderr=True)
    with console.status("measuring") as status:
        measured = measure(store, model, memory, seconds, concurrency, progress=lambda text: status.update(text))
    options = compare(traffic, measured, table, p99_ms)
    flipped = flips(traffic, measured, table, p99_ms)
    print_report(model, traffic, measured, table, p99_ms, options, best(options), flipped)
    if plot is not None:
        write_plot(plot, traffic, measured, table, p99_ms, flipped)
        click.echo(f"wrote {plot}")
