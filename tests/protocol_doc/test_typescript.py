"""TypeScript declarations and the npm package of the browser client (issue 19, item 10).

- ``tsc --noEmit`` (TypeScript from tests/js/package.json) accepts tests/js/types/example.ts,
  a front end that imports the client through its npm package (gateway/static/package.json,
  linked into tests/js/node_modules); the example's ``@ts-expect-error`` lines are mistakes
  the types must catch, so declarations that were ``any`` would fail the check.
- The declarations name exactly what client.js exports; the package holds the module and its
  declarations and has the gateway's version; every node serves ``/client.d.ts``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import aiohttp
import pytest

from gateway import __version__
from tests.protocol_doc.support import JS_DIR, node_tools
from tests.support.ports import REPO_ROOT

STATIC = REPO_ROOT / "gateway" / "static"


def exported_names(text: str) -> set[str]:
    return set(re.findall(r"^export (?:declare )?(?:class|function|const) (\w+)", text, re.M))


@pytest.mark.node
def test_tsc_accepts_the_example_and_catches_its_mistakes() -> None:
    node_tools()
    tsc = JS_DIR / "node_modules" / ".bin" / "tsc"
    done = subprocess.run(
        [str(tsc), "--noEmit", "-p", str(JS_DIR)], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr
    example = (JS_DIR / "types" / "example.ts").read_text()
    assert 'from "django-ws-gateway-client"' in example
    assert example.count("@ts-expect-error") >= 5


def test_declarations_name_what_the_module_exports() -> None:
    module = exported_names((STATIC / "client.js").read_text())
    declared = exported_names((STATIC / "client.d.ts").read_text())
    assert module == declared
    assert {"GatewayClient", "GatewayError", "AuthError"} <= module


@pytest.mark.node
def test_the_package_beside_the_client() -> None:
    node_tools()
    package: dict[str, Any] = json.loads((STATIC / "package.json").read_text())
    assert package["version"] == __version__
    assert package["exports"]["."] == {"types": "./client.d.ts", "default": "./client.js"}
    npm = shutil.which("npm")
    assert npm, "npm is not on PATH"
    done = subprocess.run(
        [npm, "pack", "--dry-run", "--json", "--ignore-scripts"],
        cwd=STATIC,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    [packed] = json.loads(done.stdout)
    assert packed["name"] == "django-ws-gateway-client"
    assert sorted(f["path"] for f in packed["files"]) == [
        "client.d.ts",
        "client.js",
        "package.json",
    ]
    # tests/js installs it from the repository, as a front end would
    linked = JS_DIR / "node_modules" / "django-ws-gateway-client"
    assert (linked / "client.d.ts").read_text() == (STATIC / "client.d.ts").read_text()


async def test_every_node_serves_the_declarations(
    make_node: Any, http: aiohttp.ClientSession
) -> None:
    node = await make_node()
    async with http.get(f"{node.http_url}/client.d.ts") as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert response.headers["Content-Type"].startswith("application/typescript")
        assert await response.text() == (STATIC / "client.d.ts").read_text()
