"""The gateway: an OpenAI-compatible proxy that captures every exchange.

The app itself is ``gateway.app.create_app``; its settings are ``GatewaySettings``. What it
shares with the sidecar and the trainer (the record, the spool format, the store) is in ``core``.
"""

from gateway.config import GatewaySettings, load_settings

__all__ = ["GatewaySettings", "load_settings"]
