"""The console's settings: its own ``console`` section of the shared config file, plus the
``store`` and the admin token (``rollouts.admin_token``) as the gateway reads them.

    console:
      host: 127.0.0.1          # a non-loopback host needs a token
      port: 8090
      gateway_url: http://127.0.0.1:8080   # the gateway whose admin API it shows and drives
      page_size: 50
      token: null              # PROTEGE_CONSOLE_TOKEN; set: every page asks for it first

Environment wins over the file: ``PROTEGE_CONSOLE_TOKEN``, ``PROTEGE_ADMIN_TOKEN``,
``PROTEGE_STORE``. A console listening beyond loopback without a token does not start
(``ConfigError`` naming ``console.token``).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, Field, SecretStr, model_validator

from core.settings import DEFAULT_STORE, KeyProblem, Model, StoreUri, gather, validate

TOKEN_ENV = "PROTEGE_CONSOLE_TOKEN"


def _check_http_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("must be an http(s) URL such as http://127.0.0.1:8080")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_check_http_url)]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ConsoleConfig(Model):
    """The ``console`` section."""

    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535)
    # The gateway's base URL: its admin API gives the rollouts and takes their changes.
    gateway_url: HttpUrl = "http://127.0.0.1:8080"
    # Rows per page of exchanges and disagreements.
    page_size: int = Field(default=50, ge=1, le=500)
    # Asked once per browser session (HttpOnly cookie); None: open, loopback only.
    token: SecretStr | None = None
    # Seconds a gateway replica's live view (drift) counts, as the autopilot reads it.
    live_max_age_s: float = Field(default=120.0, gt=0)


class AdminRef(Model):
    """The one key of the ``rollouts`` section the console needs."""

    admin_token: SecretStr | None = None


class ConsoleSettings(Model):
    console: ConsoleConfig = ConsoleConfig()
    store: StoreUri = DEFAULT_STORE
    rollouts: AdminRef = AdminRef()

    @model_validator(mode="after")
    def _exposed_needs_token(self) -> ConsoleSettings:
        if self.console.token is None and not is_loopback(self.console.host):
            raise KeyProblem(
                "console.token",
                f"is required ({TOKEN_ENV}) when the console listens on "
                f"{self.console.host!r}, beyond loopback",
            )
        return self

    @property
    def admin_token(self) -> str | None:
        token = self.rollouts.admin_token
        return token.get_secret_value() if token else None

    @property
    def token(self) -> str | None:
        token = self.console.token
        return token.get_secret_value() if token else None


def load_console_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> ConsoleSettings:
    """The console's settings from the shared YAML file at ``path``, the environment and
    ``overrides`` (e.g. ``console={"port": 9000}``, ``store=...``)."""
    env = os.environ if env is None else env
    console_env = {"console": {"token": env[TOKEN_ENV]}} if env.get(TOKEN_ENV) else {}
    data = gather(path, env, {**console_env, **_merged(console_env, overrides)})
    admin = (data.get("rollouts") or {}).get("admin_token")
    wanted: dict[str, Any] = {k: v for k, v in data.items() if k in ("console", "store")}
    if admin is not None:
        wanted["rollouts"] = {"admin_token": admin}
    return validate(ConsoleSettings, wanted)


def _merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` with its ``console`` section laid over ``base``'s (overrides win)."""
    out = dict(over)
    if "console" in base and "console" in over:
        out["console"] = {**base["console"], **over["console"]}
    return out
