"""The gateway: an OpenAI-compatible proxy that captures every exchange.

The app itself is ``gateway.app.create_app``; the names here are the contract other packages
use: the exchange record and the settings.
"""

from gateway.config import GatewaySettings, load_settings
from gateway.record import COLUMNS, SCHEMA, SCHEMA_VERSION, new_id, records_to_table

__all__ = [
    "COLUMNS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "GatewaySettings",
    "load_settings",
    "new_id",
    "records_to_table",
]
