"""Prediction intervals that widen with the horizon.

The h-step error variance grows linearly, sigma_h^2 = sigma_1^2 * (1 + g * (h - 1)), where sigma_1 is the root
mean square of the winner's one-step in-sample residuals and g is chosen so that the mean of sigma_h^2 over the
holdout's H steps equals the squared RMSE actually measured there. Where the holdout error is no larger than the
one-step error, g is floored at 1/H (the variance doubles over a holdout): a band always widens with the horizon.
The band is forecast +- z * sigma_h, clipped at zero because sales cannot be negative.
"""

from __future__ import annotations

import numpy as np


def interval_sigma(sigma_1: float, sigma_holdout: float, steps: int, holdout: int) -> np.ndarray:
    """Standard deviation of the h-step error, h = 1..steps, growing with h (see the module docstring)."""
    base = sigma_1**2 if sigma_1 > 0 else sigma_holdout**2
    h = np.arange(1, steps + 1)
    if base == 0:
        return np.zeros(steps)
    floor = 1 / max(holdout, 1)
    growth = 2 * (sigma_holdout**2 / base - 1) / (holdout - 1) if holdout > 1 else floor
    return np.sqrt(base * (1 + max(growth, floor) * (h - 1)))
