"""The sidecar: ships sealed spool segments to the store as Parquet, compacts closed partitions
and reconciles what a crash left behind. It runs as ``protege sidecar`` (``sidecar.service.run``).

The formats it reads and writes (spool segments, the record schema, store keys) are ``core``'s.
"""

from sidecar.config import SidecarSettings, load_sidecar_settings
from sidecar.service import run

__all__ = ["SidecarSettings", "load_sidecar_settings", "run"]
