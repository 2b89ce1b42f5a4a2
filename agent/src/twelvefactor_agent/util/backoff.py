"""Reconnect delays: exponential backoff with full jitter.

delay = uniform(0, min(cap, initial * multiplier ** attempt)); the attempt
counter resets after a successful connect. Full jitter spreads a fleet's
reconnects after a broker restart instead of synchronising them. Pure: the
random source is injected.
"""

from __future__ import annotations

from collections.abc import Callable

Uniform = Callable[[float, float], float]


class Backoff:
    def __init__(self, initial: float, multiplier: float, cap: float, uniform: Uniform) -> None:
        if not (initial > 0 and multiplier >= 1 and cap >= initial):
            raise ValueError("backoff needs initial > 0, multiplier >= 1, cap >= initial")
        self.initial = initial
        self.multiplier = multiplier
        self.cap = cap
        self._uniform = uniform
        self.attempt = 0

    def ceiling(self) -> float:
        """Upper bound of the next delay."""
        # Multiply step by step and stop at the cap (the attempt counter stops
        # growing there too), so a device offline for months never overflows.
        bound = self.initial
        for _ in range(self.attempt):
            bound *= self.multiplier
            if bound >= self.cap:
                return self.cap
        return min(bound, self.cap)

    def next_delay(self) -> float:
        """Delay before the next attempt; each call counts one failed attempt."""
        ceiling = self.ceiling()
        if ceiling < self.cap:
            self.attempt += 1
        return self._uniform(0.0, ceiling)

    def reset(self) -> None:
        self.attempt = 0
