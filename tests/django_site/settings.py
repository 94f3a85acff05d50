"""Settings of the Django test site: no database, no apps, no middleware (so no CSRF)."""

SECRET_KEY = "django-test-site-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.django_site.urls"
INSTALLED_APPS: list[str] = []
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
