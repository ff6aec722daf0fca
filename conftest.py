"""Fixtures shared by both test trees (``tests/`` and ``services/*/tests``)."""

pytest_plugins = ["tests.support.own_nats"]
