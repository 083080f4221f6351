"""A loopback gate in front of the S3 server that, like AWS, refuses requests signed for another
region than the bucket's (moto's server accepts any region)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from yarl import URL

from tests.loopback import LoopbackServer

_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/s3/aws4_request")
_HOP_BY_HOP = frozenset({"connection", "content-length", "transfer-encoding", "host"})


@dataclass
class RegionGate(LoopbackServer):
    """Forwards every request to ``upstream`` unless its signature names a region other than
    ``region``; counts the refusals."""

    upstream: str = ""
    region: str = ""
    refused: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._forward)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        scope = _SCOPE.search(request.headers.get("Authorization", ""))
        if scope is not None and scope.group(1) != self.region:
            self.refused += 1
            return web.Response(status=400, content_type="application/xml", text=(
                "<Error><Code>AuthorizationHeaderMalformed</Code><Message>the region "
                f"'{scope.group(1)}' is wrong; expecting '{self.region}'</Message></Error>"
            ))  # fmt: skip
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        url = URL(self.upstream + request.raw_path, encoded=True)
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(
                request.method, url, headers=headers, data=await request.read()
            ) as answer,
        ):
            body = await answer.read()
            # A HEAD answer has no body but says the object's size.
            dropped = _HOP_BY_HOP - {"content-length"} if request.method == "HEAD" else _HOP_BY_HOP
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in dropped}
            return web.Response(status=answer.status, headers=kept, body=body or None)
