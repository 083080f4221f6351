"""An S3-compatible store for the sidecar benchmark: moto's standalone server on a loopback port.

It runs as its own process, pinned to a core, and keeps every object in memory.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any, Final

import boto3
import procs

_REGION: Final = "us-east-1"
_KEY: Final = "bench"


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def env(self) -> dict[str, str]:
        """The standard AWS settings that point a client (the sidecar, pyarrow) at the server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": _KEY,
            "AWS_SECRET_ACCESS_KEY": _KEY,
            "AWS_REGION": _REGION,
            "AWS_DEFAULT_REGION": _REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=_REGION,
            aws_access_key_id=_KEY,
            aws_secret_access_key=_KEY,
        )


def start_moto(core: int, log: Path, children: list[Popen[bytes]]) -> S3Server:
    """Start moto's server pinned to ``core`` (appended to ``children``); return once it answers."""
    port = procs.free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", procs.HOST, "-p", str(port)]
    children.append(procs.start(argv, core, log, procs.local_env({})))
    procs.wait_healthy(children[-1], port, "/moto-api/", log)
    return S3Server(f"http://{procs.HOST}:{port}")


def stored(server: S3Server, bucket: str, prefix: str) -> tuple[int, int]:
    """(objects, bytes) under ``prefix`` in ``bucket``."""
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    objects = [obj for page in pages for obj in page.get("Contents", ())]
    return len(objects), sum(int(obj["Size"]) for obj in objects)


@contextlib.contextmanager
def environ(values: Mapping[str, str]) -> Iterator[None]:
    """This process's environment with ``values`` set, restored afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
