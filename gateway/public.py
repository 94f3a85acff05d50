"""The node's public files: the browser client, its TypeScript declarations and the protocol
as an AsyncAPI document. Any page of any origin may load them (``Access-Control-Allow-Origin:
*``): they hold no secret, and a front end served by Django on another origin imports
``https://gateway.example.com/client.js`` directly.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from gateway.asyncapi import document_bytes

PUBLIC_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    # a page with Cross-Origin-Embedder-Policy: require-corp may load them too
    "Cross-Origin-Resource-Policy": "cross-origin",
}
FILES = {
    "/client.js": ("client.js", "text/javascript; charset=utf-8"),
    "/client.d.ts": ("client.d.ts", "application/typescript; charset=utf-8"),
}


def add_routes(app: web.Application, static_dir: Path) -> None:
    for path, (name, content_type) in FILES.items():
        app.router.add_get(path, _file_handler(static_dir / name, content_type))
    app.router.add_get("/asyncapi.json", asyncapi_json)


def _file_handler(file: Path, content_type: str):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.FileResponse:
        return web.FileResponse(file, headers={"Content-Type": content_type, **PUBLIC_HEADERS})

    return handler


async def asyncapi_json(request: web.Request) -> web.Response:
    # built from the protocol's models once per process, on first use (gateway.asyncapi)
    return web.Response(
        body=document_bytes(), content_type="application/json", headers=PUBLIC_HEADERS
    )
