"""A tiny, real Django project standing in for the marketplace API the gateway talks to.

Run it with ``python -m tests.django_site.server --port P`` (the ``DjangoSite`` helper does).
``/api/v1/profile/`` and ``/api/v1/events/`` behave like a DRF app; ``/control/`` lets a test
change that behaviour and read what the site received. State lives in memory only.
"""
