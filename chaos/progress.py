"""Progress lines: which scenario, what it is doing, and how long everything has taken."""

from __future__ import annotations

import time


class Progress:
    """Prints `[ total s] scenario (its s): what happens`, flushed at once."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._scenario = ""
        self._scenario_started = self._started

    def begin(self, scenario: str) -> None:
        """Start timing a new scenario."""
        self._scenario = scenario
        self._scenario_started = time.monotonic()
        self.say("starting")

    def say(self, text: str) -> None:
        """Print one progress line."""
        now = time.monotonic()
        print(
            f"[{now - self._started:6.1f} s] {self._scenario} "
            f"({now - self._scenario_started:5.1f} s): {text}",
            flush=True,
        )

    def scenario_seconds(self) -> float:
        """Return how long the current scenario has run."""
        return time.monotonic() - self._scenario_started
