"""Suite-wide configuration; fixtures specific to one part live beside its tests."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# CI runs more examples; a developer's loop stays quick.
settings.register_profile("ci", max_examples=400, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=100)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
