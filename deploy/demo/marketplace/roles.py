from typing import Any


def role_of(user: Any) -> str:
    if user.is_staff:
        return "admin"
    profile = getattr(user, "profile", None)
    return profile.role if profile is not None else "cliente"
