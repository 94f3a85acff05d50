"""``gateway-testclients`` when its tokens cannot work (issue 19, item 4): the report ends with
one hint saying what to pass — a ``--token-template`` that the Django accepts, or a Django that
accepts the default tokens (``deploy/launch.py up --test-django``). Real nodes, in-process;
the run that works out of the box is in tests/deploy/test_launcher.py."""

from __future__ import annotations

from typing import Any

from gateway.testclients import EXIT_CONNECT, Options, format_report, run
from tests.support.ports import free_port


def options(url: str, **kw: Any) -> Options:
    return Options(urls=[url], clientes=2, proveedores=1, rounds=1, settle_s=0.1, **kw)


async def test_refused_tokens_say_which_template_to_pass(make_node: Any) -> None:
    node = await make_node()
    opts = options(node.ws_url, token_template="nobody-{role}-{id}")
    report = await run(opts)
    assert report.exit_code == EXIT_CONNECT
    assert all("(invalid_token)" in f for f in report.connect_failures)
    assert report.hint is not None
    assert "--token-template" in report.hint and "'nobody-cliente-1'" in report.hint
    assert "deploy/launch.py up --test-django" in report.hint
    text = format_report(report, opts)
    assert text.splitlines()[-2] == f"hint: {report.hint}"
    assert report.as_dict()["hint"] == report.hint


async def test_unreachable_django_says_where_to_point_the_nodes(make_node: Any) -> None:
    node = await make_node(django_base_url=f"http://127.0.0.1:{free_port()}/api/v1/")
    report = await run(options(node.ws_url))
    assert report.exit_code == EXIT_CONNECT
    assert all("(auth_unavailable)" in f for f in report.connect_failures)
    assert report.hint is not None and "GATEWAY_DJANGO_BASE_URL" in report.hint
    assert "--test-django" in report.hint


async def test_a_clean_run_has_no_hint(make_node: Any) -> None:
    node = await make_node()
    report = await run(options(node.ws_url))
    assert report.exit_code == 0, report.connect_failures
    assert report.hint is None
