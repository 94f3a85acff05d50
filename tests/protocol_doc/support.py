"""The AsyncAPI document as a JSON Schema registry, and the Node.js tools of tests/js."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from tests.support.ports import REPO_ROOT

JS_DIR = REPO_ROOT / "tests" / "js"
DOC_URI = "urn:gateway:asyncapi"


def node_tools() -> tuple[str, Path]:
    """``node`` and tests/js with its packages installed (``npm ci`` when needed)."""
    from tests.js.sio_driver import ensure_node_modules

    node = shutil.which("node")
    assert node, "node is not on PATH: these tests need Node.js"
    ensure_node_modules()
    return node, JS_DIR


def run_node(script: str, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    node, cwd = node_tools()
    return subprocess.run(
        [node, script, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout_s
    )


def check_asyncapi(source: str | Path) -> tuple[int, dict[str, Any]]:
    """Run the official parser (tests/js/asyncapi_check.mjs): exit code and its report."""
    done = run_node("asyncapi_check.mjs", str(source))
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout)


class FrameSchemas:
    """Validates frames against the payload schema of a message of the document."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        resource = Resource.from_contents(document, default_specification=DRAFT7)
        self.registry: Registry[Any] = Registry().with_resource(DOC_URI, resource)

    def validator(self, channel: str, key: str) -> Draft7Validator:
        pointer = f"{DOC_URI}#/channels/{channel}/messages/{key}/payload"
        return Draft7Validator({"$ref": pointer}, registry=self.registry)

    def key_of(self, channel: str, event: str, *, from_server: bool) -> str:
        """The message key of ``event`` in ``channel`` (client and server `presence` differ)."""
        direction = "gateway → client" if from_server else "client → gateway"
        [key] = [
            k
            for k, m in self.document["channels"][channel]["messages"].items()
            if m["name"] == event and direction in m["title"]
        ]
        return key

    def errors(self, frame: dict[str, Any], *, from_server: bool) -> list[str]:
        key = self.key_of("ws", str(frame.get("event")), from_server=from_server)
        validator = self.validator("ws", key)
        return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(frame)]
