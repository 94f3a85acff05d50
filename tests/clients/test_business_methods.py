"""The Python client's four business-event methods against a real node and the Django test site:
each returns the ``ack`` data whose ``eventId`` is the id of the event delivered to the other
party, and each refusal raises ``GatewayError`` with the gateway's code."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.client import AuthError, ClientState, GatewayClient, GatewayError
from tests.clients.conftest import Collector, eventually

FECHA = "2030-12-24"


async def delivered(got: Collector, room: str, event_id: str) -> dict[str, Any]:
    """The one event with ``event_id`` that reached ``room``."""
    await eventually(
        lambda: any(e["id"] == event_id for e in got.in_room(room)), 5, f"{event_id} in {room}"
    )
    [event] = [e for e in got.in_room(room) if e["id"] == event_id]
    return event


async def test_the_four_methods_return_the_ack(make_node: Any, django_site: Any) -> None:
    node = await make_node()
    cliente = GatewayClient(node.ws_url, "cliente-11")
    proveedor = GatewayClient(node.ws_url, "proveedor-12")
    at_cliente, at_proveedor = Collector(), Collector()
    cliente.on("*", at_cliente)
    proveedor.on("*", at_proveedor)
    try:
        await cliente.connect()
        await proveedor.connect()
        await proveedor.join("service_3")

        ack = await cliente.create_reservation(
            clienteId="11", proveedorId="12", servicioId="3", fecha=FECHA, estado="aceptada"
        )
        assert ack["event"] == "reservation_created"
        created = await delivered(at_proveedor, "proveedor_12", ack["eventId"])
        assert created["type"] == "reservation_created"
        assert created["source"] == "client"
        assert created["payload"]["estado"] == "pendiente"  # Django decides, not the client
        reservation_id = str(created["payload"]["id"])

        ack = await proveedor.accept_reservation(
            reservationId=reservation_id, clienteId="11", proveedorId="12", servicioId="3"
        )
        assert ack["event"] == "reservation_accepted"
        accepted = await delivered(at_cliente, "cliente_11", ack["eventId"])
        assert accepted["payload"]["estado"] == "aceptada"
        assert str(accepted["payload"]["id"]) == reservation_id

        ack = await cliente.create_payment(
            reservationId=reservation_id,
            clienteId="11",
            proveedorId="12",
            amount="25.00",
            currency="EUR",
        )
        assert ack["event"] == "payment_created"
        paid = await delivered(at_proveedor, "proveedor_12", ack["eventId"])
        assert paid["payload"]["amount"] == "25.00"

        ack = await cliente.create_comment(servicioId="3", text="¡Muy bien!", rating=5)
        assert ack["event"] == "comment_created"
        comment = await delivered(at_proveedor, "service_3", ack["eventId"])
        assert comment["payload"]["text"] == "¡Muy bien!"
    finally:
        await cliente.close()
        await proveedor.close()

    posted = [call["idempotency_key"] for call in (await django_site.acalls())["events"]]
    assert posted == [created["id"], accepted["id"], paid["id"], comment["id"]]


@pytest.mark.parametrize(
    ("method", "fields", "code", "field"),
    [
        # a cliente may not create a reservation for another cliente
        (
            "create_reservation",
            {"clienteId": "99", "proveedorId": "12", "servicioId": "3", "fecha": FECHA},
            "forbidden",
            "clienteId",
        ),
        # only a proveedor accepts reservations
        ("accept_reservation", {"clienteId": "11", "proveedorId": "12"}, "forbidden", None),
        # money is a decimal string, never a JSON number
        (
            "create_payment",
            {"clienteId": "11", "proveedorId": "12", "amount": 25},
            "validation_error",
            "amount",
        ),
        ("create_comment", {"servicioId": "3"}, "validation_error", "text"),
    ],
)
async def test_refusals_raise_gateway_error_with_the_code(
    make_node: Any,
    django_site: Any,
    method: str,
    fields: dict[str, Any],
    code: str,
    field: str | None,
) -> None:
    """Refused by the gateway's own checks: the error names the code (and the field), the
    client stays connected, and Django never hears of the event."""
    node = await make_node()
    async with GatewayClient(node.ws_url, "cliente-11") as cliente:
        with pytest.raises(GatewayError) as caught:
            await getattr(cliente, method)(**fields)
        assert caught.value.code == code
        assert caught.value.field == field
        assert not caught.value.terminal
        assert not isinstance(caught.value, AuthError)
        assert cliente.state is ClientState.CONNECTED
        assert await cliente.ping() == {}
    assert (await django_site.acalls())["events"] == []


async def test_rejected_by_django(make_node: Any, django_site: Any) -> None:
    """Django answers 4xx: ``GatewayError`` ``rejected`` with Django's ``detail``, nothing is
    delivered, and the client carries on."""
    await django_site.acontrol(events_mode="reject")
    node = await make_node()
    got = Collector()
    async with GatewayClient(node.ws_url, "cliente-11") as cliente:
        cliente.on("*", got)
        await cliente.join("service_3")
        with pytest.raises(GatewayError) as caught:
            await cliente.create_comment(servicioId="3", text="hola")
        assert caught.value.code == "rejected"
        assert caught.value.message == "Rejected by test"
        assert cliente.state is ClientState.CONNECTED

        await django_site.acontrol(events_mode="ok")
        ack = await cliente.create_comment(servicioId="3", text="otra vez")
        event = await delivered(got, "service_3", ack["eventId"])
    assert [e["id"] for e in got.events] == [event["id"]]  # the rejected one never came
    assert len((await django_site.acalls())["events"]) == 2


async def test_django_field_errors_reach_the_caller(make_node: Any, django_site: Any) -> None:
    """DRF field errors of a rejected event come back in ``GatewayError.fields`` (CONTRACT
    section 6), next to Django's message; an error without them has ``fields`` None."""
    node = await make_node()
    async with GatewayClient(node.ws_url, "cliente-11") as cliente:
        with pytest.raises(GatewayError) as caught:
            await cliente.create_reservation(
                clienteId="11", proveedorId="12", servicioId="3", fecha="1999-05-04"
            )
        assert caught.value.code == "rejected"
        assert caught.value.fields == {"fecha": ["La fecha no puede estar en el pasado."]}
        assert caught.value.message
        assert caught.value.field is None
        with pytest.raises(GatewayError) as plain:
            await cliente.create_comment(servicioId="3")
        assert plain.value.code == "validation_error" and plain.value.fields is None


def test_from_data_keeps_every_part_of_an_error() -> None:
    data = {"code": "rejected", "message": "no", "field": "x", "fields": {"x": ["bad"]}}
    error = GatewayError.from_data(data)
    assert (error.code, error.message, error.field, error.fields) == (
        "rejected",
        "no",
        "x",
        {"x": ["bad"]},
    )
    assert (
        GatewayError.from_data({"code": "rejected", "fields": ["not", "a", "dict"]}).fields is None
    )
