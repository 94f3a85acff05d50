"""Container health probe without curl: exit 0 when the URL answers 200, else 1.

    python /app/healthcheck.py [URL]

The default URL is this container's gateway node: http://127.0.0.1:$GATEWAY_PORT/healthz.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main(argv: list[str]) -> int:
    port = os.environ.get("GATEWAY_PORT", "4000")
    url = argv[1] if len(argv) > 1 else f"http://127.0.0.1:{port}/healthz"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:  # URLError and HTTPError are OSErrors
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
