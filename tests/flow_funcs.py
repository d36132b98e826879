"""Functions that test flows call through ``core.Python``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any


def slow(context: Mapping[str, Any], ms: float = 20.0) -> dict[str, Any]:
    """Simulated work: sleep ``ms`` and echo the record id."""
    time.sleep(ms / 1000.0)
    value = context["trigger"]["value"]
    return {"id": value.get("id") if isinstance(value, dict) else None}
