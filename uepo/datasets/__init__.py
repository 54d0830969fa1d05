"""Datasets that ship inside the package, in Minari's on-disk layout.

``local/hopper/medium-small-v0`` (60 whole episodes of ``local/hopper/medium-v0``, 3 MB; see its
``provenance.json`` and ``scripts/make_shipped_dataset.py``) is the default dataset, so that
``python -m uepo.train`` works on a fresh machine with no network.
"""

from __future__ import annotations

import os
from pathlib import Path

SHIPPED_ROOT = Path(__file__).resolve().parent
DEFAULT_DATASET_ID = "local/hopper/medium-small-v0"


def shipped_dataset_ids() -> list[str]:
    """Ids of the datasets under SHIPPED_ROOT (folders holding data/metadata.json)."""
    found = SHIPPED_ROOT.glob("**/data/metadata.json")
    return sorted(str(p.parent.parent.relative_to(SHIPPED_ROOT)) for p in found)


def use_shipped_dataset(dataset_id: str) -> bool:
    """Point Minari at the shipped folder when ``dataset_id`` is shipped and not found where
    MINARI_DATASETS_PATH (or ~/.minari/datasets) already points. Call before minari.load_dataset.

    Returns True when MINARI_DATASETS_PATH was changed.
    """
    if dataset_id not in shipped_dataset_ids():
        return False
    current = os.environ.get("MINARI_DATASETS_PATH") or str(Path.home() / ".minari" / "datasets")
    if (Path(current) / dataset_id / "data" / "metadata.json").exists():
        return False
    os.environ["MINARI_DATASETS_PATH"] = str(SHIPPED_ROOT)
    return True
