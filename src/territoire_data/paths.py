"""Where the project's shipped files (migrations, connectors, demo data) are, from a checkout or an install."""

from __future__ import annotations

import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[2]
_INSTALLED = Path(sys.prefix) / "share" / "territoire-data"


def shipped(name: str) -> Path:
    """The folder `name` (migrations, connectors, demo) from the checkout, else from the installed share/."""
    for root in (_CHECKOUT, _INSTALLED):
        candidate = root / name
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cannot find the {name}/ folder (looked in {_CHECKOUT} and {_INSTALLED})")
