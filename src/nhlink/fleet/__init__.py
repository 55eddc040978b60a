"""``nhlink fleet``: many simulated devices in one process, to load-test a NervesHub server.

See docs/fleet.md. The library never imports this package.
"""

from __future__ import annotations

from .histogram import Histogram
from .sim import Fleet, FleetError, FleetOptions, merge

__all__ = ["Fleet", "FleetError", "FleetOptions", "Histogram", "merge"]
