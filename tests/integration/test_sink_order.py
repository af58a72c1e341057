"""The sinks' `order` column on real databases: a late older event never replaces a newer one (issue 9, point 13).

Workers of one Redis consumer group store a stream side by side, and a claimed entry is older than what its
new owner stored meanwhile; the stream worker passes `order="event_seq"` so that each key keeps its latest.
"""

from __future__ import annotations

import uuid

import pytest

from conveyor.sinks import open_sink
from conveyor.stream.redis import entry_seq

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
def sink_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/order.db"
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return request.getfixturevalue("redis_url")


def test_a_write_never_lowers_the_order_column(sink_url):
    table = f"order_{uuid.uuid4().hex[:8]}"
    sink = open_sink(sink_url, key=("id",), table=table, order="event_seq")
    try:
        sink.write([{"id": "a", "n": 2, "event_seq": 10}, {"id": "b", "n": 1, "event_seq": 5}])
        sink.write([{"id": "a", "n": 1, "event_seq": 9}, {"id": "b", "n": 2, "event_seq": 6}])  # 9 < 10, not as text
        sink.write([{"id": "a", "n": 2, "event_seq": 10}])  # a replay of the stored event rewrites it
        got = {key: sink.get(key) for key in ("a", "b")}
    finally:
        sink.close()
    assert [(r["n"], r["event_seq"]) for r in got["a"]] == [(2, 10)]
    assert [(r["n"], r["event_seq"]) for r in got["b"]] == [(2, 6)]


def test_without_an_order_column_the_last_write_wins(sink_url):
    table = f"order_{uuid.uuid4().hex[:8]}"
    sink = open_sink(sink_url, key=("id",), table=table, order="event_seq")
    try:
        sink.write([{"id": "a", "n": 2}])
        sink.write([{"id": "a", "n": 1}])  # Kafka and Pub/Sub keep a key in order: nothing to compare
        (row,) = sink.get("a")
    finally:
        sink.close()
    assert row["n"] == 1


def test_stream_entry_ids_become_growing_integers():
    ids = ["0-0", "0-1", "1-0", "1700000000000-5", "1700000000000-10", "1700000000001-0"]
    seqs = [entry_seq(i) for i in ids]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert entry_seq("1-1048576") is None and entry_seq("x-1") is None  # past the packed range: no guard


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_stored_predictions_are_read_by_an_integer_key(backend, request, tmp_path):
    """`GET /predictions/42` for rows keyed by an integer column (a stream's `--key id`): PostgreSQL refused
    `bigint = varchar` and the service answered 503."""
    from conveyor.sinks import open_reader

    url = f"sqlite:///{tmp_path}/int.db" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    table = f"int_{uuid.uuid4().hex[:8]}"
    sink = open_sink(url, key=("id",), table=table)
    sink.write([{"id": 42, "prediction": "yes"}, {"id": 7, "prediction": "no"}])
    sink.close()
    reader = open_reader(url, table)
    try:
        assert reader.get("42") == [{"id": 42, "prediction": "yes"}]
        assert reader.get("abc") == [] and reader.get("43") == []
    finally:
        reader.close()
