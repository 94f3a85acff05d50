"""ASGI entry: ``uvicorn bench.channels_app.asgi:application`` (``/ws`` and ``/healthz``)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.channels_app.settings")

import django

django.setup()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

from bench.channels_app.consumers import RoomConsumer  # noqa: E402


def healthz(_: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


urlpatterns = [path("healthz", healthz)]

application = ProtocolTypeRouter(
    {
        "http": get_asgi_application(),
        "websocket": URLRouter([path("ws", RoomConsumer.as_asgi())]),
    }
)
