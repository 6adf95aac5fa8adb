"""The router agent's defaults, apart from router.py: `localmesh agent shadow` parses its
command line with the router's parser beside it and must not import Envoy's typed config
(seconds of start-up in a pod) to learn one number."""

from __future__ import annotations

DEFAULT_IDLE_TIMEOUT = 60.0

__all__ = ["DEFAULT_IDLE_TIMEOUT"]
