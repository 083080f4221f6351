#!/usr/bin/env python3
"""The images' health check: GET a health endpoint, exit 0 on 2xx, 1 otherwise.

Docker's HEALTHCHECK runs it (Kubernetes uses the chart's probes instead). The URL comes from
PROTEGE_HEALTHCHECK_URL, by default the gateway's /healthz on 127.0.0.1:8080; the sidecar's is
http://127.0.0.1:8081/healthz, the autopilot's http://127.0.0.1:9103/healthz.
"""

import os
import sys
import urllib.request

URL = os.environ.get("PROTEGE_HEALTHCHECK_URL", "http://127.0.0.1:8080/healthz")


def main() -> int:
    try:
        with urllib.request.urlopen(URL, timeout=3) as response:
            return 0 if 200 <= response.status < 300 else 1
    except OSError as exc:
        print(f"unhealthy: {URL}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
