"""``DjangoSite``: the Django test site (``tests/django_site``) in its own process."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.ports import REPO_ROOT, free_port, http_get, http_status_or_none
from tests.support.processes import ManagedProcess, child_env

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class DjangoSite(ManagedProcess):
    """The Django test site on ``127.0.0.1:<port>``; ``base_url`` is its ``/api/v1/`` root.

    Behaviour switches (see ``control``) and the record of calls live in the site process;
    ``reset()`` restores the defaults. ``stop()``/``start()`` restart it on the same port with
    fresh state, for "Django went away" tests.
    """

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        super().__init__(
            name=f"django-{self.port}",
            argv=[sys.executable, "-m", "tests.django_site.server", "--port", str(self.port)],
            env=child_env({"DJANGO_SETTINGS_MODULE": "tests.django_site.settings"}),
            log_dir=log_dir,
            cwd=REPO_ROOT,
        )

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}api/v1/"

    def ready(self) -> bool:
        return self.alive and http_status_or_none(f"{self.root_url}control/calls") == 200

    # --- control (sync, for fixtures and sync tests) ------------------------------------------
    def control(self, **changes: Any) -> dict[str, Any]:
        """Change the site's behaviour. Keys:

        - ``events_mode``: ``ok`` (validate, 201 with the canonical object), ``reject`` (400
          ``{"detail": "Rejected by test"}``), ``fail`` (500), ``slow`` (sleep
          ``slow_seconds``, then as ``ok``), ``rooms`` (as ``ok`` plus ``"rooms": rooms``),
          ``empty`` (validate, then 204 without a body), ``receipts`` (as ``ok`` plus
          ``"receipts": true``);
        - ``profile_mode``: ``ok``, ``fail`` (500), ``slow`` (sleep, then answer) or ``late``
          (answer as things stand, but only after ``slow_seconds``: a revoke meanwhile is
          not seen);
        - ``presence_mode``: ``ok`` (``presence/`` runs ``gateway.contrib.django.presence_view``)
          or ``fail`` (503: Django is down for the presence feed);
        - ``slow_seconds`` (float, default 1.0), ``rooms`` (list of room names);
        - ``revoke``: tokens that answer 401 from now on;
        - ``reset``: back to the defaults first (also clears the record of calls).
        """
        request = urllib.request.Request(
            f"{self.root_url}control/",
            data=json.dumps(changes).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with _opener.open(request, timeout=5) as response:
                result: dict[str, Any] = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                raise ValueError(f"control{changes!r}: {exc.read().decode()}") from None
        return result

    def reset(self) -> None:
        """Default behaviour, nothing revoked, no calls recorded, ids from 1 again."""
        self.control(reset=True)

    def calls(self) -> dict[str, Any]:
        """What the site received: ``profile_calls`` (calls with a token),
        ``profile_probes`` (without), ``profile_calls_by_token``, ``profile_schemes``
        (``{"Token": n, "Bearer": m}``) and ``events``: one dict per POST to ``events/`` with
        ``auth_scheme``, ``token``, ``idempotency_key``, ``body``, ``status``, ``response``,
        ``replayed`` and ``user_id``; ``presence``: the changes the ``@presence_changed`` hook
        handled, in order, and ``presence_posts``: POSTs to ``presence/``."""
        status, body = http_get(f"{self.root_url}control/calls")
        if status != 200:
            raise RuntimeError(f"control/calls answered {status}: {body[:200]!r}")
        result: dict[str, Any] = json.loads(body)
        return result

    # --- the same for async tests (no blocking call in the event loop) ----------------------
    async def acontrol(self, **changes: Any) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.root_url}control/", json=changes) as response,
        ):
            response.raise_for_status()
            result: dict[str, Any] = await response.json()
        return result

    async def acalls(self) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.root_url}control/calls") as response,
        ):
            response.raise_for_status()
            result: dict[str, Any] = await response.json()
        return result

    # --- JWTs, as the site issues them with SimpleJWT (tests/django_site/jwt_tokens.py) -------
    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}jwks/"

    async def ajwt(self, user_id: str | int, **options: Any) -> str:
        """A SimpleJWT access token for ``user_id``. Options: ``role``, ``alg`` (HS256,
        RS256, ES256), ``kid``, ``lifetimeS`` (negative: expired), ``iat``, ``aud``, ``iss``,
        ``claims``."""
        answer = await self.ajwt_control(action="issue", userId=str(user_id), **options)
        return str(answer["token"])

    async def ajwt_control(self, **body: Any) -> dict[str, Any]:
        """POST ``/control/jwt/``: ``action`` ``issue``, ``rotate`` (``publish``: false keeps
        the new key out of the JWKS), ``publish`` (``kid``), ``jwks`` (``mode`` ``ok``/``fail``)
        or ``role`` (``userId``, ``role``)."""
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.root_url}control/jwt/", json=body) as response,
        ):
            if response.status != 200:
                raise ValueError(f"control/jwt {body!r}: {await response.text()}")
            result: dict[str, Any] = await response.json()
        return result

    async def ajwt_keys(self) -> dict[str, Any]:
        """``secret``, ``rsa_public_pem``, ``ec_public_pem``, ``kids`` and ``jwks_calls``."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.root_url}control/jwt/") as response,
        ):
            response.raise_for_status()
            result: dict[str, Any] = await response.json()
        return result
