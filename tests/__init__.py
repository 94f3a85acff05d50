"""Test suite. A package so helpers import as ``from tests.support import ...``."""
