"""Who is online, from the gateway: "proveedor online" for clientes.

The gateway's worker POSTs online/offline changes to ``api/v1/presence/``
(``GATEWAY_DJANGO_PRESENCE_PATH=presence/``); the hook below tells every cliente when a proveedor
comes online or goes offline, and ``GET api/v1/proveedores/`` answers who is online now.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from gateway.contrib.django import PresenceChange, online, presence_changed, publish
from marketplace.roles import role_of


@presence_changed
def proveedor_status(change: PresenceChange) -> None:
    if change.role != "proveedor":
        return
    status = {"proveedorId": change.user_id, "online": change.online, "ts": change.ts}
    publish("all_clientes", "proveedor_status", status)


@api_view(["GET"])
def proveedores(request: Request) -> Response:
    """Every proveedor with its online status: ``[{"id", "username", "online", "lastSeen"}]``."""
    users = [u for u in get_user_model().objects.order_by("pk") if role_of(u) == "proveedor"]
    status = online([u.pk for u in users]) if users else {}
    return Response(
        [
            {
                "id": str(u.pk),
                "username": u.get_username(),
                "online": status[str(u.pk)]["online"],
                "lastSeen": status[str(u.pk)]["lastSeen"],
            }
            for u in users
        ]
    )
