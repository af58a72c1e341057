"""Fixtures for integration tests that need real servers besides Conveyor's own."""

from tests.integration.postgres import postgres_url

__all__ = ["postgres_url"]
