"""Client business events arriving from the gateway, as the user who sent them."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework.exceptions import PermissionDenied, ValidationError

from gateway.contrib.django.views import gateway_event
from marketplace.models import Comment, Payment, Reservation
from marketplace.roles import role_of


def _user(user_id: Any, field: str) -> Any:
    try:
        return get_user_model().objects.get(pk=int(user_id))
    except (ValueError, TypeError, get_user_model().DoesNotExist):
        raise ValidationError({field: ["unknown user"]}) from None


def _acting_as(request: Any, user_id: Any) -> None:
    if role_of(request.user) != "admin" and str(request.user.pk) != str(user_id):
        raise PermissionDenied("you may only act as yourself")


@gateway_event("reservation_created")
def reservation_created(request: Any, payload: dict[str, Any], event_id: str) -> dict[str, Any]:
    _acting_as(request, payload.get("clienteId"))
    try:
        fecha = datetime.fromisoformat(str(payload["fecha"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        raise ValidationError({"fecha": ["a valid ISO 8601 date is required"]}) from None
    if timezone.is_naive(fecha):
        fecha = timezone.make_aware(fecha)
    if fecha < timezone.now():
        raise ValidationError({"fecha": ["must be in the future"]})
    reservation = Reservation.objects.create(
        cliente=_user(payload.get("clienteId"), "clienteId"),
        proveedor=_user(payload.get("proveedorId"), "proveedorId"),
        servicio_id=str(payload.get("servicioId")),
        fecha=fecha,
    )
    return reservation.as_event()


@gateway_event("reservation_accepted")
def reservation_accepted(request: Any, payload: dict[str, Any], event_id: str) -> dict[str, Any]:
    _acting_as(request, payload.get("proveedorId"))
    try:
        reservation = Reservation.objects.get(
            pk=int(payload.get("reservationId") or 0), proveedor_id=int(payload["proveedorId"])
        )
    except (ValueError, KeyError, Reservation.DoesNotExist):
        raise ValidationError({"reservationId": ["no such reservation of yours"]}) from None
    reservation.estado = "aceptada"
    reservation.save(update_fields=["estado"])
    return reservation.as_event()


@gateway_event("payment_created")
def payment_created(request: Any, payload: dict[str, Any], event_id: str) -> dict[str, Any]:
    _acting_as(request, payload.get("clienteId"))
    try:
        amount = Decimal(str(payload.get("amount")))
    except InvalidOperation:
        raise ValidationError({"amount": ["a decimal string is required"]}) from None
    payment = Payment.objects.create(
        cliente=_user(payload.get("clienteId"), "clienteId"),
        proveedor=_user(payload.get("proveedorId"), "proveedorId"),
        amount=amount,
        currency=str(payload.get("currency") or "EUR"),
    )
    return {
        "id": str(payment.pk),
        "clienteId": str(payment.cliente_id),
        "proveedorId": str(payment.proveedor_id),
        "amount": f"{payment.amount:.2f}",
        "currency": payment.currency,
        "estado": "registrado",
    }


@gateway_event("comment_created")
def comment_created(request: Any, payload: dict[str, Any], event_id: str) -> dict[str, Any]:
    text = str(payload.get("text") or "").strip()
    if not text:
        raise ValidationError({"text": ["may not be blank"]})
    comment = Comment.objects.create(
        servicio_id=str(payload.get("servicioId")),
        author=request.user,
        text=text,
        rating=payload.get("rating"),
    )
    return {
        "id": str(comment.pk),
        "servicioId": comment.servicio_id,
        "text": comment.text,
        "rating": comment.rating,
        "authorId": str(comment.author_id),
    }
