"""The demo's own REST endpoints. Changes made here reach WebSocket clients through
``publish_on_commit``: only once the transaction has committed."""

from __future__ import annotations

from typing import Any

from django.core.mail import send_mail
from django.db import transaction
from rest_framework.decorators import api_view
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from gateway.contrib.django import disconnect, publish, publish_on_commit, wait_for_receipt
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


@api_view(["POST"])
def remind_reservation(request: Request, pk: int) -> Response:
    """The proveedor reminds the cliente of a reservation: a WebSocket event that asks for a
    receipt; without one within ``timeout`` seconds (default 3, at most 10), an e-mail instead.
    (Waiting blocks this request's thread: a real app would do it in a task queue.)"""
    reservation = Reservation.objects.filter(pk=pk).first()
    if reservation is None:
        raise NotFound("no such reservation")
    if role_of(request.user) != "admin" and reservation.proveedor_id != request.user.pk:
        raise PermissionDenied("only the reservation's proveedor may send reminders")
    timeout = min(10.0, max(0.1, float(request.data.get("timeout", 3))))
    result = publish(
        f"cliente_{reservation.cliente_id}",
        "reservation_reminder",
        reservation.as_event(),
        receipts=True,
    )
    if wait_for_receipt(result.event_id, reservation.cliente_id, timeout):
        return Response({"eventId": result.event_id, "delivered": True, "fallback": None})
    send_mail(
        "Recordatorio de tu reserva",
        f"Tu reserva {reservation.pk} es el {reservation.fecha:%Y-%m-%d %H:%M}.",
        None,
        [reservation.cliente.email or f"cliente{reservation.cliente_id}@example.test"],
    )
    return Response({"eventId": result.event_id, "delivered": False, "fallback": "email"})
