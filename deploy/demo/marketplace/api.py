"""The demo's own REST endpoints. Changes made here reach WebSocket clients through
``publish_on_commit``: only once the transaction has committed."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from rest_framework.decorators import api_view
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from gateway.contrib.django import disconnect, publish_on_commit
from marketplace.handlers import reservation_created
from marketplace.models import Reservation
from marketplace.roles import role_of


@api_view(["POST"])
def create_reservation(request: Request) -> Response:
    payload: dict[str, Any] = {**request.data, "clienteId": str(request.user.pk)}
    with transaction.atomic():
        answer = reservation_created(request, payload, "")
        reservation = Reservation.objects.get(pk=int(answer["id"]))
        publish_on_commit(reservation.rooms(), "reservation_created", answer)
    return Response(answer, status=201)


@api_view(["POST"])
def accept_reservation(request: Request, pk: int) -> Response:
    with transaction.atomic():
        reservation = Reservation.objects.select_for_update().filter(pk=pk).first()
        if reservation is None:
            raise NotFound("no such reservation")
        if role_of(request.user) != "admin" and reservation.proveedor_id != request.user.pk:
            raise PermissionDenied("only the reservation's proveedor may accept it")
        reservation.estado = "aceptada"
        reservation.save(update_fields=["estado"])
        publish_on_commit(reservation.rooms(), "reservation_accepted", reservation.as_event())
    return Response(reservation.as_event())


@api_view(["POST"])
def logout(request: Request) -> Response:
    """Delete the user's token and close their WebSockets on every node."""
    if hasattr(request.user, "auth_token"):
        request.user.auth_token.delete()
    return Response({"disconnected": disconnect(request.user)})
