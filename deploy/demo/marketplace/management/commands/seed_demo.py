"""Create demo users with API tokens: ``manage.py seed_demo --clientes 3 --proveedores 2``.
Prints one JSON object: {"cliente": [{"id", "token"}], "proveedor": [...], "admin": [...]}."""

import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token

from marketplace.models import Profile


class Command(BaseCommand):
    help = "Create demo clientes, proveedores and an admin, each with a DRF token."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--clientes", type=int, default=3)
        parser.add_argument("--proveedores", type=int, default=2)

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        users = get_user_model()
        out: dict[str, list[dict[str, str]]] = {"cliente": [], "proveedor": [], "admin": []}
        plan = [
            ("cliente", options["clientes"]),
            ("proveedor", options["proveedores"]),
            ("admin", 1),
        ]
        for role, count in plan:
            for n in range(1, count + 1):
                user, _ = users.objects.get_or_create(
                    username=f"{role}{n}", defaults={"is_staff": role == "admin"}
                )
                user.set_password(user.username)  # demo only: password = user name
                user.save(update_fields=["password"])
                Profile.objects.update_or_create(user=user, defaults={"role": role})
                token, _ = Token.objects.get_or_create(user=user)
                out[role].append(
                    {"id": str(user.pk), "token": token.key, "username": user.username}
                )
        self.stdout.write(json.dumps(out))
