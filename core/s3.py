"""One S3 configuration for every client of the store: the writer (aiobotocore, ``core.store``)
and the reader (pyarrow's ``S3FileSystem``, ``core.read``) are built from the same settings.

The settings are the standard AWS ones, read as the AWS SDKs read them:

    endpoint     AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, else the profile's ``endpoint_url``
                 (none: AWS itself)
    region       AWS_REGION, else AWS_DEFAULT_REGION, else the profile's ``region``, else us-east-1
    profile      AWS_PROFILE, else AWS_DEFAULT_PROFILE, else ``default``, in AWS_CONFIG_FILE
                 (default ``~/.aws/config``)
    credentials  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN when set; else
                 each SDK's own chain (the profile's credentials file, an instance or pod role),
                 which refreshes expiring credentials by itself

Timeouts are the store's: 5 s to connect, 60 s of silence on a read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from aiobotocore.config import AioConfig
from botocore.configloader import load_config
from botocore.exceptions import ConfigParseError

from core.errors import ConfigError

DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class S3Settings:
    """How to reach S3: resolved once, then handed to both clients."""

    region: str = DEFAULT_REGION
    # Scheme, host and port of an S3-compatible server; None: AWS's own endpoint.
    endpoint_url: str | None = None
    # Static credentials; None: the SDK's default chain finds them.
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Settings:
        """The settings named by ``env`` (default: this process's environment) and its profile."""
        env = os.environ if env is None else env
        profile = _profile(env)
        endpoint = (
            env.get("AWS_ENDPOINT_URL_S3")
            or env.get("AWS_ENDPOINT_URL")
            or profile.get("endpoint_url")
        )
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or profile.get("region")
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        static = bool(key and secret)
        return cls(
            region=region or DEFAULT_REGION,
            endpoint_url=_with_scheme(endpoint) if endpoint else None,
            access_key_id=key if static else None,
            secret_access_key=secret if static else None,
            session_token=env.get("AWS_SESSION_TOKEN") if static else None,
        )

    def client_options(self) -> dict[str, Any]:
        """Arguments of aiobotocore's ``create_client("s3", ...)``."""
        options: dict[str, Any] = {
            "region_name": self.region,
            "endpoint_url": self.endpoint_url,
            "config": AioConfig(
                connect_timeout=self.connect_timeout_s,
                read_timeout=self.read_timeout_s,
                # No retries inside botocore: callers retry with their own backoff, and count it.
                retries={"max_attempts": 1, "mode": "standard"},
                max_pool_connections=16,
            ),
        }
        if self.access_key_id is not None:
            options["aws_access_key_id"] = self.access_key_id
            options["aws_secret_access_key"] = self.secret_access_key
            options["aws_session_token"] = self.session_token
        return options

    def arrow_options(self) -> dict[str, Any]:
        """Arguments of ``pyarrow.fs.S3FileSystem``."""
        options: dict[str, Any] = {
            "region": self.region,
            "connect_timeout": self.connect_timeout_s,
            "request_timeout": self.read_timeout_s,
        }
        if self.endpoint_url is not None:
            url = urlparse(self.endpoint_url)
            options["scheme"] = url.scheme
            options["endpoint_override"] = url.netloc
        if self.access_key_id is not None:
            options["access_key"] = self.access_key_id
            options["secret_key"] = self.secret_access_key
            options["session_token"] = self.session_token
        return options


def _with_scheme(endpoint: str) -> str:
    return endpoint if "://" in endpoint else f"https://{endpoint}"


def _profile(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings of the AWS profile ``env`` names; empty when there is no config file."""
    name = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    path = os.path.expanduser(env.get("AWS_CONFIG_FILE") or "~/.aws/config")
    if not os.path.isfile(path):
        return {}
    try:
        profiles: dict[str, Any] = load_config(path).get("profiles", {})
    except ConfigParseError as exc:
        raise ConfigError(f"config: AWS_CONFIG_FILE {path} cannot be read: {exc}") from exc
    profile = profiles.get(name, {})
    return profile if isinstance(profile, dict) else {}
