"""The sidecar: ships sealed spool segments to the store as Parquet, and reads them back."""

from sidecar.read import count_exchanges, iter_exchanges, read_exchanges
from sidecar.store import Store, open_store

__all__ = ["Store", "count_exchanges", "iter_exchanges", "open_store", "read_exchanges"]
