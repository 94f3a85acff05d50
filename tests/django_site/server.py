"""Serve the Django test site with a threaded stdlib WSGI server (quick to start, and slow
requests do not block the others): ``python -m tests.django_site.server --port P``."""

from __future__ import annotations

import argparse
import os
import sys
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True  # restart on the same port at once
    # socketserver's listen backlog is 5: a burst of token checks (a connect storm in the
    # benchmarks) overflowed it, and the dropped SYNs came back after 1, 3, 7 s... long enough
    # for the gateway's authentication deadline (4408). Production servers use ~2048.
    request_queue_size = 2048


class Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    options = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_site.settings")

    from django.core.wsgi import get_wsgi_application

    app = get_wsgi_application()
    with make_server(options.host, options.port, app, ThreadingWSGIServer, Handler) as httpd:
        print(f"django test site on http://{options.host}:{options.port}/", flush=True)
        httpd.serve_forever()


if __name__ == "__main__":
    main()
