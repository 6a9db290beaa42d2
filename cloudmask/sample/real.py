"""The real demo catalogue that ships inside the package (``cloudmask/data/demo``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import CatalogNotFoundError

#: On Cloud N chip ids of the demo catalogue and what each shows.
DEMO_CHIPS: dict[str, str] = {
    "adwp": "open water of Lake Victoria with scattered cumulus and their shadows (Chifunfu, Tanzania)",
    "adwu": "heavy broken cloud with shadows (Chifunfu, Tanzania)",
    "adwz": "mostly cloud with a clear corner, a third of it lake water (Chifunfu, Tanzania)",
    "adxp": "fully overcast (Chifunfu, Tanzania)",
    "akny": "green farmland with small clouds and shadows (Addis Ababa, Ethiopia)",
}


def demo_catalog() -> Path:
    """``catalog.json`` of the real demo catalogue installed with the package (five 512 x 512 px chips at 10 m).

    It ships in the wheel as package data (``cloudmask/data/demo``); a source checkout has it in the
    same place. Rebuild it from the shared chips with ``scripts/make_demo_catalog.py``.
    """
    path = Path(str(resources.files("cloudmask") / "data" / "demo" / "catalog.json"))
    if not path.is_file():
        raise CatalogNotFoundError(
            f"the demo catalogue is missing from the installed package ({path}); reinstall s2-cloudmask "
            "(pip install --force-reinstall s2-cloudmask) or use `cloudmask demo --synthetic`"
        )
    return path
