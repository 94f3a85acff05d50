from django.apps import AppConfig


class MarketplaceConfig(AppConfig):
    name = "marketplace"

    def ready(self) -> None:
        from marketplace import (
            handlers,  # noqa: F401 - registers the gateway event handlers
            presence,  # noqa: F401 - registers the presence hook
        )
