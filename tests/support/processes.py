"""Fresh processes for the tests that must see settings read at start-up."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Every key the settings read from the environment: none of this shell's reaches a fresh process.
SETTINGS_KEYS = set(
    re.findall(r"""env\.\w+\(\s*["']([A-Z_]+)["']""", (ROOT / "bookings_project/settings.py").read_text())
)


def settings_free_environ() -> dict[str, str]:
    """This process's environment without any key the settings read, on the real settings."""
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS_KEYS}
    clean["DJANGO_SETTINGS_MODULE"] = "bookings_project.settings"
    return clean
