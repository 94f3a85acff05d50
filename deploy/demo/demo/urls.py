from django.contrib import admin
from django.urls import path
from marketplace import api, presence
from rest_framework_simplejwt.views import TokenObtainPairView

from gateway.contrib.django import presence_view
from gateway.contrib.django.views import events_view, profile_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/profile/", profile_view),
    path("api/v1/events/", events_view),
    path("api/v1/token/", TokenObtainPairView.as_view()),
    path("api/v1/reservations/", api.create_reservation),
    path("api/v1/reservations/<int:pk>/accept/", api.accept_reservation),
    # a reminder that falls back to e-mail when the cliente's client does not acknowledge it
    path("api/v1/reservations/<int:pk>/remind/", api.remind_reservation),
    path("api/v1/logout/", api.logout),
    # online/offline changes from the gateway's worker (GATEWAY_DJANGO_PRESENCE_PATH=presence/)
    path("api/v1/presence/", presence_view),
    path("api/v1/proveedores/", presence.proveedores),
]
