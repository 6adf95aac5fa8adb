"""The check of a command-line number of seconds (light: the agents' start-up imports it)."""

from __future__ import annotations

import math

from localmesh.errors import ConfigError


def check_seconds(flag: str, value: float) -> float:
    """`value` when it is a number of seconds above 0 and finite (float() takes `nan` and
    `inf` too, and a nan timeout never expires); a one-line ConfigError otherwise."""
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{flag} {value:g}: give a positive number of seconds")
    return value
