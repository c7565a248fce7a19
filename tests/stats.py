"""The statistical yardstick of the sampling tests."""

import math

import numpy as np

DELTA = 1e-6


def tv_bound(draws: int, support: int, delta: float = DELTA) -> float:
    """Distribution-free bound on the total variation between the empirical law of
    `draws` samples and the true law on `support` outcomes, holding with probability
    1 - delta: sqrt((support ln 2 + ln(1 / delta)) / (2 draws))."""
    return math.sqrt((support * math.log(2) + math.log(1 / delta)) / (2 * draws))


def tv(samples, target) -> float:
    """Total variation between the empirical law of integer `samples` and `target`."""
    counts = np.bincount(np.asarray(samples), minlength=len(target))
    return 0.5 * float(np.abs(counts / len(samples) - np.asarray(target)).sum())
