"""Streaming predictions on Kafka, Google Pub/Sub and Redis Streams, passive and active.

Passive: each event updates its stored prediction in a sink, which the service reads back. Active: a
request names a reply topic and a correlation id, and its prediction is published there. The worker
(worker.py) is broker-agnostic; kafka.py, pubsub.py and redis.py adapt one broker each, imported lazily.
"""
