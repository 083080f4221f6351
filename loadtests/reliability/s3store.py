"""An S3 store for a scenario: moto's server (``moto_s3``) behind a ``Gate``.

The gateway and the sidecar reach the store through the gate, so an outage can be staged
without losing what the server holds; the scenario reads the store straight from the server.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gate import Gate
from ledger import StoreView, read_store
from moto_s3 import S3Server, environ, start_moto
from services import Workspace

BUCKET = "protege-reliability"


@dataclass(frozen=True)
class S3Store:
    server: S3Server
    gate: Gate

    def read(self, store_uri: str) -> StoreView:
        """The store's rows, read straight from the server (pyarrow takes the credentials from
        this process's environment, so they are set there for the duration)."""
        with environ(self.server.env()):
            return read_store(store_uri, self.server.env())


async def s3_store(ws: Workspace) -> S3Store:
    """Start moto on the workspace's second core, open a gate to it, and point the
    workspace's store and its children's AWS settings at the gate."""
    log = ws.new_log("moto")
    server = await asyncio.to_thread(start_moto, ws.cores[1], log, ws.children)
    await asyncio.to_thread(server.client().create_bucket, Bucket=BUCKET)
    port = int(server.endpoint.rsplit(":", 1)[1])
    gate = Gate(port)
    await gate.open()
    ws.store_uri = f"s3://{BUCKET}/protege"
    ws.aws = {**server.env(), "AWS_ENDPOINT_URL": gate.endpoint}
    return S3Store(server, gate)
