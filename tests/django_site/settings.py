"""Settings of the Django test site: no database, no apps, no middleware (so no CSRF)."""

SECRET_KEY = "django-test-site-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.django_site.urls"
# contrib.auth only so that SimpleJWT's token classes import (no database: nothing is queried)
INSTALLED_APPS: list[str] = ["django.contrib.contenttypes", "django.contrib.auth"]
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
# the gateway's server API key (tests/support/nodes.API_KEY): authenticates presence changes
GATEWAY_PUBLISH_API_KEY = "test-publish-key"
TIME_ZONE = "UTC"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    # 4xx answers are the point of many tests: log only server errors.
    "loggers": {"django.request": {"handlers": ["stderr"], "level": "ERROR"}},
}

# SimpleJWT, as a project using it for access tokens configures it (HS256, 5-minute tokens);
# the key is at least 32 bytes, as RFC 7518 asks of an HS256 key.
SIMPLE_JWT = {
    "ALGORITHM": "HS256",
    "SIGNING_KEY": "django-test-site-jwt-signing-key-0123456789",
    "ACCESS_TOKEN_LIFETIME": __import__("datetime").timedelta(minutes=5),
}
