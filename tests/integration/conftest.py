"""Fixtures for integration tests that need real servers besides Conveyor's own."""

from tests.integration.postgres import postgres_url
from tests.integration.redis_server import redis_url

__all__ = ["postgres_url", "redis_url"]
