"""End-to-end smoke: one node, both backends, the core flow of the protocol."""

from __future__ import annotations

from typing import Any


async def test_auth_join_business_event_delivery(node: Any, http: Any) -> None:
    cliente = await node.client(http, token="cliente-1")
    first = await cliente.expect("auth_success")
    assert first["data"]["userId"] == "1"
    assert first["data"]["rooms"] == ["cliente_1", "all_clientes"]
    proveedor = await node.client(http)
    await proveedor.authenticate("proveedor-7")
    ack = await cliente.request(
        "reservation_created",
        {"clienteId": "1", "proveedorId": "7", "servicioId": "3", "fecha": "2030-01-02"},
    )
    assert ack["event"] == "ack", ack
    [event] = await proveedor.events(1)
    assert event["room"] == "proveedor_7"
    assert event["type"] == "reservation_created"
    assert event["id"] == ack["data"]["eventId"]
    assert event["payload"]["estado"] == "pendiente"
    assert event["offset"] == 1
    [own] = await cliente.events(1)
    assert own["room"] == "cliente_1"
    await cliente.close()
    await proveedor.close()
