"""The stream worker against real brokers (Kafka from Maven Central, Debian's redis-server) and real databases.

Workers run in a thread (fast checks) or as `conveyor stream` subprocesses (kill -9, SIGTERM, metrics).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
import sqlalchemy as sa

from conveyor.sinks.sql import driver_url
from conveyor.store import ModelStore
from conveyor.stream.broker import CORRELATION_ID, Broker, Message, open_broker
from conveyor.stream.client import RequestClient
from conveyor.stream.worker import StreamJob, Worker
from tests.conftest import conveyor, free_port, start_server

pytestmark = pytest.mark.integration

STREAM = [sys.executable, "-m", "conveyor.cli", "stream"]


def _broker(request, name: str) -> str:
    if name == "redis":
        # a worker killed -9 leaves entries that a new consumer claims once idle for 5 s (30 s by default)
        return request.getfixturevalue("redis_url") + "?claim_idle=5"
    if name == "pubsub":
        return f"pubsub://conveyor-test?emulator={request.getfixturevalue('pubsub_emulator')}"
    # a member killed -9 keeps its partitions for session.timeout.ms (45 s by default): 6 s is the broker's minimum
    return "kafka://" + request.getfixturevalue("kafka_bootstrap") + "?session.timeout.ms=6000"


@pytest.fixture(params=["redis", "kafka", "pubsub"])
def broker_uri(request) -> str:
    return _broker(request, request.param)


@pytest.fixture(params=["redis", "kafka"])
def durable_broker_uri(request) -> str:
    """Brokers for the fault tests (Pub/Sub's emulator redelivers only after a whole ack deadline)."""
    return _broker(request, request.param)


def new_topic() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def events(n: int, start: int = 0, seed: int = 0) -> list[dict]:
    x = np.random.default_rng(seed).normal(size=(n, 4))
    return [{"id": start + i, **{f"x{j}": float(x[i, j]) for j in range(4)}} for i in range(n)]


def prepare(broker: Broker, uri: str, topic: str, partitions: int = 1) -> None:
    if uri.startswith("kafka"):
        broker.ensure_topic(topic, partitions=partitions)
    if uri.startswith("pubsub"):  # a Pub/Sub topic keeps messages only for the subscriptions that exist
        broker.subscribe(topic, f"{topic}-workers")


def publish(uri: str, topic: str, records: list, partitions: int = 1, key: str | None = None) -> None:
    broker = open_broker(uri)
    try:
        prepare(broker, uri, topic, partitions)
        values = [r if isinstance(r, bytes) else orjson.dumps(r) for r in records]
        keys = [str(r[key]).encode() for r in records] if key else None
        for start in range(0, len(values), 5000):
            broker.publish(topic, values[start : start + 5000], keys=keys[start : start + 5000] if keys else None)
    finally:
        broker.close()


def drain(uri: str, topic: str, expect: int, timeout: float = 30) -> list[Message]:
    """Every message of `topic` (a dead-letter topic), read by the group named like it (which the worker
    created on Pub/Sub to keep them)."""
    broker: Broker = open_broker(uri)
    got: list[Message] = []
    try:
        broker.subscribe(topic, topic)
        deadline = time.monotonic() + timeout
        while len(got) < expect and time.monotonic() < deadline:
            batch = broker.consume(1000, 0.5)
            got += batch
            broker.ack(batch)
    finally:
        broker.close()
    return got


def count_rows(url: str, table: str = "predictions") -> int:
    engine = sa.create_engine(driver_url(url))
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(table):
                return 0
            return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
    except sa.exc.OperationalError:
        return -1
    finally:
        engine.dispose()


def read_rows(url: str, table: str = "predictions") -> pd.DataFrame:
    engine = sa.create_engine(driver_url(url))
    try:
        with engine.connect() as conn:
            return pd.read_sql_table(table, conn)
    finally:
        engine.dispose()


def expected_labels(store_dir: Path, records: list[dict]) -> pd.Series:
    model = ModelStore(store_dir).load("iris")
    frame = pd.DataFrame(records)
    return pd.Series(model.predict_frame(frame[["x0", "x1", "x2", "x3"]])["prediction"].to_numpy(), index=frame["id"])


def job(store_dir: Path, uri: str, topic: str, **kw) -> StreamJob:
    kw.setdefault("stop_after_idle", 8.0 if uri.startswith("kafka") else 3.0 if uri.startswith("pubsub") else 1.5)
    return StreamJob(str(store_dir), kw.pop("model", "iris"), uri, topic, kw.pop("group", f"{topic}-workers"), **kw)


# --- passive mode ---------------------------------------------------------------------------------------


def test_passive_events_update_the_stored_predictions_the_service_answers(tmp_path, store_dir, broker_uri):
    topic, db = new_topic(), f"sqlite:///{tmp_path}/p.db"
    series = ["1/GROCERY I", "2/PRODUCE", "total"]
    later = {"series": "2/PRODUCE", "range": 5}  # keyed by series: the broker keeps the order of one key's events
    publish(broker_uri, topic, [*({"series": s, "range": 2} for s in series), later], key="series")
    counts = Worker(job(store_dir, broker_uri, topic, model="sales", sink=db, key=("series",), max_messages=4)).run()
    assert counts == {"consumed": 4, "predicted": 4, "stored": 4, "replied": 0, "dead_lettered": 0}
    rows = read_rows(db).set_index("series")
    assert sorted(rows.index) == sorted(series)
    assert rows.loc["2/PRODUCE", "range"] == 5  # the latest event for a key wins
    server = start_server(store_dir, "sales", tmp_path, "--predictions", db)
    try:
        with server.client() as client:
            body = client.get("/predictions/" + urllib.parse.quote("2/PRODUCE")).json()
            live = client.get("/predict", params={"series": "2/PRODUCE", "range": 5}).json()
    finally:
        server.stop()
    (stored,) = body["predictions"]
    assert stored["model"] == "sales" and stored["version"] == 1 and stored["event_id"]
    assert stored["forecast"] == pytest.approx([p["forecast"] for p in live["predictions"]])


def test_bad_messages_are_dead_lettered_and_the_rest_flows(tmp_path, store_dir, broker_uri, redis_url):
    topic = new_topic()
    good = events(300)
    bad = [
        b"not json",
        b"[1, 2]",
        orjson.dumps({"id": 9001, "x0": "abc", "x1": 1, "x2": 1, "x3": 1}),
        orjson.dumps({"x0": 1, "x1": 1, "x2": 1, "x3": 1}),
        orjson.dumps({"id": 9002, "x0": 1, "x1": 1}),
        b"\xff\xfe",
    ]
    mixed = good[:100] + bad[:3] + good[100:200] + bad[3:] + good[200:]
    publish(broker_uri, topic, mixed)
    counts = Worker(job(store_dir, broker_uri, topic, sink=redis_url, key=("id",), table=topic, batch=64)).run()
    assert counts["consumed"] == len(mixed) and counts["predicted"] == 300 and counts["dead_lettered"] == len(bad)
    import redis

    client = redis.Redis.from_url(redis_url)
    stored = {int(k.split(b":")[1]): v for k in client.keys(f"{topic}:*") for v in [client.hget(k, "prediction")]}
    want = expected_labels(store_dir, good)
    assert len(stored) == 300 and all(stored[i].decode() == want[i] for i in want.index)
    server = start_server(store_dir, "iris", tmp_path, "--predictions", redis_url, "--predictions-table", topic)
    try:
        with server.client() as http:
            (row,) = http.get("/predictions/42").json()["predictions"]
            assert http.get("/predictions/9001").status_code == 404  # dead-lettered, never stored
    finally:
        server.stop()
    assert row["id"] == 42 and row["prediction"] == want[42] and row["version"] == 1
    letters = drain(broker_uri, f"{topic}.dlq", len(bad))
    assert sorted(m.value for m in letters) == sorted(bad)
    reasons = {m.value: m.headers["error"] for m in letters}
    assert "not UTF-8 JSON" in reasons[b"not json"] and "not UTF-8 JSON" in reasons[b"\xff\xfe"]
    assert "expected a JSON object" in reasons[b"[1, 2]"]
    assert "'x0' must be a finite number, got 'abc'" in reasons[bad[2]]
    assert "lacks key field(s) ['id']" in reasons[bad[3]]
    assert "x2" in reasons[bad[4]]
    assert all(m.headers["source_topic"] == topic and m.headers["error_kind"] for m in letters)


# --- active mode ----------------------------------------------------------------------------------------


def test_active_requests_get_their_prediction_back(store_dir, broker_uri):
    topic = new_topic()
    publish(broker_uri, topic, [])
    worker = Worker(job(store_dir, broker_uri, topic, stop_after_idle=None, batch=50))
    thread = threading.Thread(target=worker.run, daemon=True)
    try:
        with RequestClient(broker_uri, topic) as client:
            thread.start()
            records = [{k: v for k, v in r.items() if k != "id"} for r in events(120)]
            replies = client.request_many(records, timeout=60)
            bad = client.request({"x0": "oops", "x1": 0, "x2": 0, "x3": 0}, timeout=20)
            assert client.request(records[0], timeout=20)["prediction"] == replies[0]["prediction"]
    finally:
        worker.stop()
        thread.join(30)
    want = expected_labels(store_dir, [{"id": i, **r} for i, r in enumerate(records)])
    assert [r["prediction"]["prediction"] for r in replies] == list(want)
    assert all(r["model"] == "iris" and r["version"] == 1 and r[CORRELATION_ID] for r in replies)
    assert bad["error"]["kind"] == "invalid_input" and "'x0' must be a finite number" in bad["error"]["message"]
    assert worker.counts["replied"] == 121 and worker.counts["dead_lettered"] == 1


def test_events_and_requests_share_the_seeds_one_topic_and_group(tmp_path, store_dir, broker_uri):
    """Issue 9 point 14: on one topic and group (the seed's `sale-range` / `predict-range`) a worker stores the
    events and answers the requests; a request never overwrites a stored prediction, an event is never refused."""
    topic, db = new_topic(), f"sqlite:///{tmp_path}/p.db"
    publish(broker_uri, topic, [])
    worker = Worker(
        job(store_dir, broker_uri, topic, model="sales", sink=db, key=("series",), stop_after_idle=None, batch=20)
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    stored = [
        {"series": "total", "range": 2},
        {"series": "1/GROCERY I", "range": 2},
        {"series": "2/PRODUCE", "range": 2},
    ]
    try:
        with RequestClient(broker_uri, topic) as client:
            thread.start()
            publish(broker_uri, topic, stored[:1], key="series")
            asked = [{"series": "total", "range": 3}, {"series": "1/GROCERY I", "range": 4}]
            replies = client.request_many(asked, timeout=60)
            publish(broker_uri, topic, stored[1:], key="series")
            wait_for(lambda: count_rows(db) == 3, 60, "the three events")
    finally:
        worker.stop()
        thread.join(30)
    assert [len(r["prediction"]["forecast"]) for r in replies] == [3, 4]
    rows = read_rows(db).set_index("series")
    assert sorted(rows.index) == sorted(e["series"] for e in stored)
    assert (rows["range"] == 2).all(), "a request overwrote a stored prediction"
    assert worker.counts["dead_lettered"] == 0 and worker.counts["replied"] == 2 and worker.counts["stored"] == 3


# --- faults ---------------------------------------------------------------------------------------------


def start_worker(store_dir: Path, uri: str, topic: str, sink: str, log: Path, *extra: str) -> subprocess.Popen:
    cmd = [*STREAM, "iris", "--store", str(store_dir), "--broker", uri, "--topic", topic, "--group", f"{topic}-workers",
           "--sink", sink, "--key", "id", "--batch", "200", *extra]  # fmt: skip
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def check_exactly_once(store_dir: Path, url: str, records: list[dict]) -> None:
    rows = read_rows(url)
    assert len(rows) == len(records) and rows["id"].is_unique
    want = expected_labels(store_dir, records)
    assert (rows.set_index("id")["prediction"].sort_index() == want.sort_index()).all()


@pytest.mark.slow
def test_kill_9_mid_stream_then_restart_loses_nothing(tmp_path, store_dir, durable_broker_uri):
    topic, db = new_topic(), f"sqlite:///{tmp_path}/p.db"
    records = events(20_000)
    publish(durable_broker_uri, topic, records, partitions=3)
    log = tmp_path / "worker.log"
    first = start_worker(store_dir, durable_broker_uri, topic, db, log)
    wait_for(lambda: count_rows(db) > 2_000 or first.poll() is not None, 60, "the first rows")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    stored_before = count_rows(db)
    assert 0 < stored_before < len(records), "kill -9 must land mid-stream"
    second = start_worker(store_dir, durable_broker_uri, topic, db, log, "--stop-after-idle", "8")
    assert second.wait(120) == 0, log.read_text()[-2000:]
    check_exactly_once(store_dir, db, records)


def consumers(url: str, topic: str, group: str) -> dict[str, dict]:
    """XINFO CONSUMERS of the group: name -> {pending, idle}."""
    import redis

    with redis.Redis.from_url(url, decode_responses=True) as client:
        try:
            return {c["name"]: c for c in client.xinfo_consumers(topic, group)}
        except redis.ResponseError:  # no group yet
            return {}


@pytest.mark.slow
def test_two_workers_on_one_host_then_kill_9_of_one_the_survivor_claims_its_entries(tmp_path, store_dir, redis_url):
    """Issue 9 point 13: two worker processes of one group on one host are two consumers (not one, named after
    the host); after `kill -9` of one, the survivor claims the entries the dead one had not acked, removes the
    dead consumer, and every key ends up stored once with its latest event, although the entries it claimed
    are older than the events it stored meanwhile."""
    import sqlite3

    import redis

    topic, path = new_topic(), tmp_path / "p.db"
    db, group = f"sqlite:///{path}", f"{topic}-workers"
    keys, rounds = 200, 10
    records = [{**e, "id": i % keys, "n": i} for i, e in enumerate(events(keys * (rounds + 1)))]
    uri = redis_url + "?claim_idle=6"  # what a dead consumer holds is claimable after 6 s (default 30 s)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    victim = start_worker(store_dir, uri, topic, db, log_a, "--batch", "100", "--keep", "n")
    survivor = start_worker(
        store_dir, uri, topic, db, log_b, "--batch", "100", "--keep", "n", "--stop-after-idle", "20"
    )
    try:
        wait_for(lambda: len(consumers(redis_url, topic, group)) == 2, 60, "two consumers in the group")
        named = [n for n in consumers(redis_url, topic, group) if f"-{victim.pid}-" in n]
        assert len(named) == 1, consumers(redis_url, topic, group)
        dead = named[0]
        # both workers have opened the sink and wait for messages
        wait_for(lambda: all("events stored in" in log.read_text() for log in (log_a, log_b)), 60, "both workers")
        # A locked database holds each worker on the first batch it reads (retrying its write), so both hold
        # entries (published only now: a worker started first cannot take them all) and the kill lands on one.
        lock = sqlite3.connect(path, timeout=30)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            publish(redis_url, topic, records[: keys * rounds], key="id")
            # (a consumer silent for claim_idle is removed by the other until it reads again: Redis < 7.2)
            wait_for(
                lambda: consumers(redis_url, topic, group).get(dead, {}).get("pending", 0) > 0, 60, "the victim's batch"
            )
            time.sleep(0.5)  # one more write attempt at least: the batch is in hand, not being read
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()
            stranded = consumers(redis_url, topic, group)[dead]["pending"]
            # The last round, stored by the survivor well before the dead one's (older) entries become claimable.
            publish(redis_url, topic, records[keys * rounds :], key="id")
        finally:
            lock.rollback()
            lock.close()
        assert stranded > 0, "kill -9 must land while the victim holds entries"
        assert survivor.wait(180) == 0, log_b.read_text()[-2000:]
    finally:
        for proc in (victim, survivor):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    with redis.Redis.from_url(redis_url) as client:
        assert client.xpending(topic, group)["pending"] == 0, "entries left pending"
    left = consumers(redis_url, topic, group)
    assert dead not in left and len(left) == 1, f"the dead consumer was not removed: {left}"
    claimed = sum(int(line.split("claimed ")[1].split()[0]) for line in log_b.read_text().splitlines()
                  if "claimed " in line)  # fmt: skip
    assert claimed >= stranded, log_b.read_text()[-2000:]
    rows = read_rows(db).set_index("id").sort_index()
    assert len(rows) == keys and list(rows["n"]) == [keys * rounds + k for k in range(keys)], "an older event won"
    want = expected_labels(store_dir, records[keys * rounds :])
    assert (rows["prediction"] == want.sort_index()).all()


def kafka_members(bootstrap: str, group: str) -> list:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})  # held: its futures resolve only while it lives
    (future,) = admin.describe_consumer_groups([group]).values()
    try:
        return list(future.result(10).members)
    except Exception:  # not there yet
        return []


@pytest.mark.slow
@pytest.mark.kafka
def test_two_kafka_workers_on_one_host_are_two_members_and_the_survivor_takes_over(
    tmp_path, store_dir, kafka_bootstrap
):
    """Issue 9 point 13 on Kafka: members are told apart by the coordinator's member ids (no static
    group.instance.id derived from the host), so two workers on one host split the partitions, and after
    `kill -9` of one the survivor takes its partitions over and stores every key's latest event."""
    uri = f"kafka://{kafka_bootstrap}?session.timeout.ms=6000"
    topic, db = new_topic(), f"sqlite:///{tmp_path}/p.db"
    keys, rounds = 200, 20
    records = [{**e, "id": i % keys, "n": i} for i, e in enumerate(events(keys * rounds))]
    publish(uri, topic, records, partitions=4, key="id")
    victim = start_worker(store_dir, uri, topic, db, tmp_path / "a.log", "--batch", "100", "--keep", "n")
    survivor = start_worker(
        store_dir, uri, topic, db, tmp_path / "b.log", "--batch", "100", "--keep", "n", "--stop-after-idle", "15"
    )
    try:
        members: list = []

        def split() -> bool:
            members[:] = kafka_members(kafka_bootstrap, f"{topic}-workers")
            return len(members) == 2 and all(m.assignment.topic_partitions for m in members)

        wait_for(split, 90, "two members sharing the partitions")
        assert len({m.member_id for m in members}) == 2
        assert sorted(m.client_id for m in members) == sorted(f"conveyor-{socket.gethostname()}-{p.pid}"
                                                              for p in (victim, survivor))  # fmt: skip
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        assert survivor.wait(180) == 0, (tmp_path / "b.log").read_text()[-2000:]
    finally:
        for proc in (victim, survivor):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    rows = read_rows(db).set_index("id").sort_index()
    assert len(rows) == keys and list(rows["n"]) == [keys * (rounds - 1) + k for k in range(keys)]


def test_a_slow_batch_is_not_claimed_from_a_live_worker(tmp_path, store_dir, redis_url):
    """Issue 9 point 13: a worker stuck on its batch (here the database is locked) keeps its entries fresh; the
    other worker of the group claims nothing, however long past the claim time."""
    import sqlite3

    topic, path = new_topic(), tmp_path / "p.db"
    uri = redis_url + "?claim_idle=4"  # a keepalive every second: a stall of a few seconds must not lose them
    publish(redis_url, topic, events(50))
    lock = sqlite3.connect(path)
    # every write of the workers waits for the lock, fails with "database is locked" and is retried; reading (their
    # check of the table at start) still works
    lock.execute("BEGIN IMMEDIATE")
    slow = Worker(job(store_dir, uri, topic, sink=f"sqlite:///{path}", key=("id",), stop_after_idle=None))
    other = Worker(job(store_dir, uri, topic, sink=f"sqlite:///{path}", key=("id",), stop_after_idle=None))
    threads = [threading.Thread(target=w.run, daemon=True) for w in (slow, other)]
    try:
        threads[0].start()
        wait_for(lambda: sum(c["pending"] for c in consumers(redis_url, topic, f"{topic}-workers").values()) == 50,
                 60, "the slow worker's batch")  # fmt: skip
        threads[1].start()
        wait_for(lambda: len(consumers(redis_url, topic, f"{topic}-workers")) == 2, 60, "the other worker")
        time.sleep(12)  # three times the claim time
        assert other.counts["consumed"] == 0, "a live worker's entries were claimed"
        lock.rollback()
        wait_for(lambda: count_rows(f"sqlite:///{path}") == 50, 60, "the stored batch")
    finally:
        lock.close()
        for w in (slow, other):
            w.stop()
        for t in threads:
            t.join(30)
    assert slow.counts["stored"] == 50 and other.counts["consumed"] == 0


@pytest.mark.slow
@pytest.mark.postgres
def test_database_outage_stops_acks_and_the_worker_catches_up(tmp_path, store_dir, durable_broker_uri, postgres_server):
    topic, table = new_topic(), f"outage_{uuid.uuid4().hex[:6]}"
    records = events(6_000)
    publish(durable_broker_uri, topic, records[:3_000])
    worker = Worker(
        job(store_dir, durable_broker_uri, topic, sink=postgres_server.url, key=("id",), table=table, batch=100,
            max_backoff=1.0, stop_after_idle=None)
    )  # fmt: skip
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: count_rows(postgres_server.url, table) == 3_000, 60, "the first 3,000 rows")
        postgres_server.stop()
        publish(durable_broker_uri, topic, records[3_000:])
        time.sleep(4)  # the worker retries with backoff and acks nothing meanwhile
        acked_during_outage = worker.counts["consumed"]
        postgres_server.start()
        wait_for(lambda: count_rows(postgres_server.url, table) == 6_000, 90, "the catch-up")
    finally:
        worker.stop()
        thread.join(30)
    assert acked_during_outage <= 3_000 + 100  # at most the batch in hand when the database went away
    rows = read_rows(postgres_server.url, table)
    assert len(rows) == 6_000 and rows["id"].is_unique
    want = expected_labels(store_dir, records)
    assert (rows.set_index("id")["prediction"].sort_index() == want.sort_index()).all()


def test_sigterm_drains_and_commits_and_metrics_count(tmp_path, store_dir, durable_broker_uri):
    topic, db = new_topic(), f"sqlite:///{tmp_path}/p.db"
    records = events(5_000)
    publish(durable_broker_uri, topic, records)
    port = free_port()
    log = tmp_path / "worker.log"
    proc = start_worker(store_dir, durable_broker_uri, topic, db, log, "--metrics-port", str(port))
    wait_for(lambda: count_rows(db) > 0, 60, "the first rows")
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "conveyor_stream_messages_total" in text and "conveyor_stream_batch_duration_seconds" in text
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(30) == 0, log.read_text()[-2000:]
    first = int(log.read_text().split("consumed ")[-1].split(" message")[0].replace(",", ""))
    again = start_worker(store_dir, durable_broker_uri, topic, db, log, "--stop-after-idle", "8")
    assert again.wait(120) == 0
    second = int(log.read_text().split("consumed ")[-1].split(" message")[0].replace(",", ""))
    assert first + second == len(records), "a drained worker commits what it consumed: nothing is read twice"
    check_exactly_once(store_dir, db, records)


def test_the_worker_follows_its_alias_between_batches(tmp_path, store_dir, redis_url, iris_model):
    import shutil

    from sklearn.dummy import DummyClassifier

    root = tmp_path / "store"
    shutil.copytree(store_dir, root)
    store = ModelStore(root)
    store.promote("iris:1", "production")
    topic, db = new_topic(), f"sqlite:///{tmp_path}/p.db"
    worker = Worker(
        job(root, redis_url, topic, model="iris@production", sink=db, key=("id",), reload_interval=0.2,
            stop_after_idle=None)
    )  # fmt: skip
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        publish(redis_url, topic, events(50))
        wait_for(lambda: count_rows(db) == 50, 30, "the first events")
        _, X = iris_model
        store.add("iris", DummyClassifier(strategy="constant", constant="no").fit(X, ["no"] * len(X)), flavor="sklearn")
        store.promote("iris:2", "production")
        time.sleep(1.0)
        publish(redis_url, topic, events(50, start=50))
        wait_for(lambda: count_rows(db) == 100, 30, "the later events")
    finally:
        worker.stop()
        thread.join(30)
    rows = read_rows(db).set_index("id").sort_index()
    assert set(rows.loc[:49, "version"]) == {1} and set(rows.loc[50:, "version"]) == {2}
    assert set(rows.loc[50:, "prediction"]) == {"no"}


@pytest.mark.postgres
def test_a_row_the_database_refuses_is_dead_lettered_alone(store_dir, redis_url, postgres_url):
    topic, table = new_topic(), f"refuse_{uuid.uuid4().hex[:6]}"
    records = events(40)
    poison = {**events(1, start=999)[0], "id": "not-a-number"}  # the table's id column is BIGINT
    publish(redis_url, topic, [*records[:20], poison, *records[20:]])
    counts = Worker(job(store_dir, redis_url, topic, sink=postgres_url, key=("id",), table=table, batch=100)).run()
    assert counts["predicted"] == 41 and counts["dead_lettered"] == 1
    assert sorted(read_rows(postgres_url, table)["id"]) == list(range(40))
    (letter,) = drain(redis_url, f"{topic}.dlq", 1)
    assert orjson.loads(letter.value)["id"] == "not-a-number" and letter.headers["error_kind"] == "sink_refused"
    assert "the sink refused the prediction" in letter.headers["error"]


def test_the_cli_publishes_and_requests_and_refuses_bad_input_in_one_line(tmp_path, store_dir, redis_url):
    topic = new_topic()
    lines = tmp_path / "events.jsonl"
    lines.write_text("\n".join(orjson.dumps(e).decode() for e in events(30)) + "\n")
    out = conveyor("stream", "publish", "--broker", redis_url, "--topic", topic, str(lines), check=False)
    assert out.returncode == 0 and out.stdout.strip() == f"published 30 messages to {topic}", out.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n{oops\n')
    out = conveyor("stream", "publish", "--broker", redis_url, "--topic", topic, str(bad), check=False)
    assert out.returncode == 2 and out.stderr.startswith(f"error: line 2 of {bad} is not JSON")
    assert len(out.stderr.strip().splitlines()) == 1
    worker = start_worker(store_dir, redis_url, topic, f"sqlite:///{tmp_path}/p.db", tmp_path / "w.log",
                          "--stop-after-idle", "2")  # fmt: skip
    assert worker.wait(60) == 0
    assert count_rows(f"sqlite:///{tmp_path}/p.db") == 30
    requests = new_topic()
    cmd = [*STREAM, "iris", "--store", str(store_dir), "--broker", redis_url, "--topic", requests,
           "--group", f"{requests}-workers"]  # fmt: skip
    with open(tmp_path / "active.log", "wb") as log:
        active = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ask = ["stream", "request", "--broker", redis_url, "--topic", requests, "--timeout", "20"]
        out = conveyor(*ask, '{"x0": 2, "x1": 2, "x2": 0, "x3": 0}', check=False)
        assert out.returncode == 0, out.stderr
        assert orjson.loads(out.stdout)["prediction"]["prediction"] == "yes"
        out = conveyor(*ask, '{"x0": "x", "x1": 2, "x2": 0, "x3": 0}', check=False)
        assert out.returncode == 2 and orjson.loads(out.stdout)["error"]["kind"] == "invalid_input"
    finally:
        os.killpg(active.pid, signal.SIGTERM)
        assert active.wait(30) == 0
    out = conveyor(*ask[:-2], "--timeout", "1", '{"x0": 1, "x1": 1, "x2": 0, "x3": 0}', check=False)
    assert out.returncode == 7 and "got no reply" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = conveyor("stream", "iris", "--broker", "amqp://x", "--topic", "t", "--group", "g", "--sink",
                   "sqlite:///x.db", "--store", str(store_dir), check=False)  # fmt: skip
    assert out.returncode == 2 and out.stderr.startswith("error: unknown broker 'amqp://x'")


# --- what is stored -------------------------------------------------------------------------------------


def test_a_sink_table_of_another_layout_is_refused_before_the_first_event(tmp_path, store_dir, redis_url):
    """A table the worker cannot write (another job's) was found only at the first write, then every event was
    dead-lettered (or, on SQLite, retried forever): it is refused at start, in one line naming the columns."""
    db = f"sqlite:///{tmp_path}/other.db"
    engine = sa.create_engine(db)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE predictions (id INTEGER PRIMARY KEY, score REAL NOT NULL)"))
    engine.dispose()
    topic = new_topic()
    args = ["iris", "--store", str(store_dir), "--broker", redis_url, "--topic", topic, "--group", "g"]
    args += ["--sink", db, "--key", "id"]
    proc = subprocess.run([*STREAM, *args, "--stop-after-idle", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]  # after the worker's INFO log lines
    assert last.startswith("error: table 'predictions'") and "lacks ['x0'" in last and "'prediction'" in last


def test_an_event_with_fields_beyond_the_model_inputs_is_stored_like_the_others(tmp_path, store_dir, redis_url):
    """The first event no longer decides the table: a later one with one more field (or one fewer, filled by its
    default) is stored, not dead-lettered as the table's refusal."""
    topic, db = new_topic(), f"sqlite:///{tmp_path}/p.db"
    first = [{"series": "total", "range": 2}]
    later = [{"series": "1/GROCERY I", "range": 3, "note": "promo week"}, {"series": "2/PRODUCE"}]
    publish(redis_url, topic, first, key="series")
    Worker(job(store_dir, redis_url, topic, model="sales", sink=db, key=("series",), batch=1, max_messages=1)).run()
    publish(redis_url, topic, later, key="series")
    counts = Worker(job(store_dir, redis_url, topic, model="sales", sink=db, key=("series",), batch=1)).run()
    assert counts["stored"] == 2 and counts["dead_lettered"] == 0
    rows = read_rows(db).set_index("series")
    assert sorted(rows.index) == ["1/GROCERY I", "2/PRODUCE", "total"]
    assert "note" not in rows.columns and rows.loc["2/PRODUCE", "range"] == 1  # the signature's default
