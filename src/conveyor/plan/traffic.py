"""A traffic profile: the request rate of each hour of a typical day (or week), what costs are computed over."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from conveyor.errors import InvalidInput


@dataclass(frozen=True)
class Profile:
    """Requests per second in each hour of a typical day (24 values) or week (168)."""

    hourly_rps: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.hourly_rps) not in (24, 168):
            raise InvalidInput(f"a profile has 24 (a day) or 168 (a week) hourly rates, not {len(self.hourly_rps)}")
        if any(not math.isfinite(r) or r < 0 for r in self.hourly_rps):
            raise InvalidInput("hourly request rates must be finite numbers >= 0")

    @classmethod
    def constant(cls, rps: float) -> Profile:
        return cls((float(rps),) * 24)

    @classmethod
    def daily_peak(cls, peak: float, mean: float, busy_hours: int) -> Profile:
        """`busy_hours` hours a day at `peak`, the others at the rate that makes the day's mean `mean`."""
        if not 1 <= busy_hours <= 24:
            raise InvalidInput(f"--busy-hours must be 1..24, got {busy_hours}")
        if not 0 <= mean <= peak:
            raise InvalidInput(f"--mean ({mean:g}) must be between 0 and --peak ({peak:g})")
        quiet = (24 * mean - busy_hours * peak) / (24 - busy_hours) if busy_hours < 24 else peak
        if quiet < -1e-9:
            raise InvalidInput(
                f"{busy_hours} hours at {peak:g} req/s already average {busy_hours * peak / 24:g} req/s over a day, "
                f"more than --mean {mean:g}: lower --busy-hours or --peak, or raise --mean"
            )
        start = (24 - busy_hours) // 2 + 3 if busy_hours < 24 else 0  # busy hours centred on the afternoon
        hours = [max(quiet, 0.0)] * 24
        for h in range(busy_hours):
            hours[(start + h) % 24] = float(peak)
        return cls(tuple(hours))

    @classmethod
    def from_file(cls, path: Path) -> Profile:
        """One rate per line (or comma-separated), in requests per second; `#` starts a comment."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise InvalidInput(f"--profile {path}: {exc.strerror}") from None
        values = []
        for number, line in enumerate(text.splitlines(), 1):
            for item in line.split("#", 1)[0].replace(",", " ").split():
                try:
                    values.append(float(item))
                except ValueError:
                    raise InvalidInput(f"--profile {path}: line {number}: {item!r} is not a request rate") from None
        try:
            return cls(tuple(values))
        except InvalidInput as exc:
            raise InvalidInput(f"--profile {path}: {exc}") from None

    def scaled(self, factor: float) -> Profile:
        return Profile(tuple(r * factor for r in self.hourly_rps))

    @property
    def mean(self) -> float:
        return sum(self.hourly_rps) / len(self.hourly_rps)

    @property
    def peak(self) -> float:
        return max(self.hourly_rps)

    def requests_per_month(self, hours_per_month: float) -> float:
        return self.mean * 3600 * hours_per_month
