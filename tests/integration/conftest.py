"""Fixtures for integration tests that need real servers besides Conveyor's own."""

from tests.integration.browser import browser
from tests.integration.kafka_server import kafka_bootstrap
from tests.integration.postgres import postgres_server, postgres_url
from tests.integration.pubsub_server import pubsub_emulator
from tests.integration.redis_server import redis_url
from tests.integration.spark_cluster import spark_cluster

__all__ = [
    "browser",
    "kafka_bootstrap",
    "postgres_server",
    "postgres_url",
    "pubsub_emulator",
    "redis_url",
    "spark_cluster",
]
