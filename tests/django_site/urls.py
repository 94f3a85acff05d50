from django.urls import path, re_path

from tests.django_site import views

urlpatterns = [
    path("api/v1/profile/", views.profile),
    path("api/v1/events/", views.events),
    path("api/v1/jwks/", views.jwks),
    path("api/v1/presence/", views.presence),
    path("control/", views.control),
    path("control/jwt/", views.control_jwt),
    re_path(r"^control/calls/?$", views.control_calls),
]
