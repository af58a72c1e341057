"""Stream benchmark: the worker on a real Kafka broker, PostgreSQL and Redis, all on this machine.

Passive: N events (default 1,000,000) are published to Kafka first, then one worker drains them into
PostgreSQL and, with another group, into Redis; events/s is end to end (consume, decode, validate,
predict, upsert, commit), start-up and group join included. The baseline is the seed's way: a consumer
that handles one message at a time (decode, predict one row, write one row, commit). Active: a client
publishes requests at a fixed rate to a worker (no sink: it answers requests) and times each request to its reply.

    python benchmarks/stream.py [--events N] [--batch B] [--rate R] [--seconds S]

Writes benchmarks/results/stream.json and stream.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).parent / "results"

from tests.integration.kafka_server import running_kafka  # noqa: E402
from tests.integration.postgres import running_postgres  # noqa: E402
from tests.integration.redis_server import running_redis  # noqa: E402

from conveyor.store import ModelStore  # noqa: E402
from conveyor.stream.broker import open_broker  # noqa: E402
from conveyor.stream.client import RequestClient  # noqa: E402
from conveyor.stream.worker import StreamJob, Worker  # noqa: E402

COLUMNS = ["x0", "x1", "x2", "x3"]


def make_store(root: Path) -> str:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    train = pd.DataFrame(rng.normal(size=(1000, 4)), columns=COLUMNS)
    est = LogisticRegression().fit(train, np.where(train["x0"] + train["x1"] > 0, "yes", "no"))
    ModelStore(root).add("clf", est, flavor="sklearn", example=train.iloc[:5])
    return str(root)


def publish_events(uri: str, topic: str, n: int, partitions: int = 4) -> float:
    broker = open_broker(uri)
    broker.ensure_topic(topic, partitions=partitions)
    x = np.random.default_rng(1).normal(size=(n, 4)).round(6)
    started = time.perf_counter()
    chunk = 20_000
    for start in range(0, n, chunk):
        values = [
            orjson.dumps({"id": start + i, "x0": r[0], "x1": r[1], "x2": r[2], "x3": r[3]})
            for i, r in enumerate(x[start : start + chunk].tolist())
        ]
        broker.publish(topic, values)
        print(f"\rpublished {min(start + chunk, n):,} / {n:,}", end="", flush=True)
    seconds = time.perf_counter() - started
    broker.close()
    print(f"\rpublished {n:,} events in {seconds:.1f}s = {n / seconds:,.0f} events/s", flush=True)
    return seconds


def drain(store: str, uri: str, topic: str, sink: str, n: int, batch: int, label: str) -> dict:
    job = StreamJob(store, "clf", uri, topic, f"bench-{uuid.uuid4().hex[:6]}", sink=sink, key=("id",),
                    table=f"bench_{uuid.uuid4().hex[:6]}", batch=batch, max_messages=n)  # fmt: skip
    started = time.perf_counter()
    counts = Worker(job).run()
    seconds = time.perf_counter() - started
    assert counts["consumed"] == n and counts["predicted"] == n, counts
    rate = n / seconds
    print(f"passive -> {label}, batch {batch}: {n:,} events in {seconds:.1f}s = {rate:,.0f} events/s", flush=True)
    return {"events": n, "batch": batch, "seconds": seconds, "events_per_s": rate}


def one_at_a_time(store: str, uri: str, topic: str, sink_url: str, n: int) -> dict:
    """The seed's way, as its Pub/Sub callback does it: each message decoded, predicted, stored and acked alone."""
    from conveyor.sinks import open_sink

    model = ModelStore(store).load("clf")
    broker = open_broker(uri)
    broker.subscribe(topic, f"one-{uuid.uuid4().hex[:6]}")
    sink = open_sink(sink_url, key=("id",), table=f"one_{uuid.uuid4().hex[:6]}")
    started, done = time.perf_counter(), 0
    while done < n:
        for m in broker.consume(1, 1.0):
            record = orjson.loads(m.value)
            prediction = model.predict_frame(pd.DataFrame([record])[COLUMNS]).iloc[0].to_dict()
            sink.write([{**record, **prediction, "model": model.name, "version": model.version}])
            broker.ack([m])
            done += 1
    seconds = time.perf_counter() - started
    broker.close()
    sink.close()
    print(f"passive -> PostgreSQL, one message at a time (the seed's callback): {n:,} events in {seconds:.1f}s = "
          f"{n / seconds:,.0f} events/s", flush=True)  # fmt: skip
    return {"events": n, "batch": 1, "seconds": seconds, "events_per_s": n / seconds}


def active(store: str, uri: str, rate: float, seconds: float, tmp: Path) -> dict:
    """Requests at a fixed rate from one client; the worker runs as its own process, as in production."""
    topic = f"requests-{uuid.uuid4().hex[:6]}"
    log = tmp / "active-worker.log"
    import gc

    gc.freeze()  # the client's own full collections would be measured as latency
    with RequestClient(uri, topic) as client, open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", "stream", "clf", "--store", store, "--broker", uri,
             "--topic", topic, "--group", "active", "--batch", "100"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            client.request_many([{c: 0.1 for c in COLUMNS}] * 5, timeout=60)  # worker up and joined
            sent: dict[str, float] = {}
            arrived: dict[str, float] = {}
            total = int(rate * seconds)
            done = threading.Event()

            def receive() -> None:  # arrival times only: a reply may come in before its send() has returned
                quiet_since = None
                while True:
                    for body in client.receive(0.2):
                        arrived.setdefault(str(body.get("correlation_id")), time.perf_counter())
                    if done.is_set():
                        if len(arrived) >= len(sent):
                            return
                        quiet_since = quiet_since or time.perf_counter()
                        if time.perf_counter() - quiet_since > 10:
                            return

            receiver = threading.Thread(target=receive, daemon=True)
            receiver.start()
            x = np.random.default_rng(2).normal(size=(total, 4)).round(6).tolist()
            start = time.perf_counter()
            for i in range(total):
                due = start + i / rate
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                at = time.perf_counter()
                (cid,) = client.send([dict(zip(COLUMNS, x[i], strict=True))])
                sent[cid] = at
            achieved = total / (time.perf_counter() - start)
            done.set()
            receiver.join(30)
        finally:
            worker.terminate()
            worker.wait(30)
    got = np.array([arrived[c] - t for c, t in sent.items() if c in arrived]) * 1000
    result = {
        "rate_requested": rate,
        "rate_sent": achieved,
        "requests": total,
        "replies": len(got),
        "p50_ms": float(np.percentile(got, 50)),
        "p99_ms": float(np.percentile(got, 99)),
        "max_ms": float(got.max()),
    }
    print(
        f"active at {achieved:,.0f} requests/s for {seconds:.0f}s: {len(got):,}/{total:,} replies, "
        f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms",
        flush=True,
    )
    return result


def write_results(results: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stream.json").write_text(json.dumps(results, indent=2) + "\n")
    p = results["passive"]
    lines = [
        f"# Stream benchmark ({results['machine']})",
        "",
        f"Kafka {results['kafka']} (one KRaft node), PostgreSQL and Redis on the same 2 cores; scikit-learn "
        f"LogisticRegression; events published first ({results['publish_events_per_s']:,.0f} events/s), then drained.",
        "",
        "| path | events | seconds | events/s | vs one at a time |",
        "|---|---|---|---|---|",
    ]
    base = p["one_at_a_time"]["events_per_s"]
    for name, r in p.items():
        lines.append(
            f"| {name} (batch {r['batch']}) | {r['events']:,} | {r['seconds']:.1f} | {r['events_per_s']:,.0f} | "
            f"{r['events_per_s'] / base:.1f}x |"
        )
    a = results["active"]
    lines += [
        "",
        f"Active: {a['rate_sent']:,.0f} requests/s for {a['requests'] / a['rate_sent']:.0f}s, "
        f"{a['replies']:,}/{a['requests']:,} replies: p50 {a['p50_ms']:.1f} ms, p99 {a['p99_ms']:.1f} ms, "
        f"max {a['max_ms']:.1f} ms.",
        "",
    ]
    (RESULTS / "stream.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--baseline-events", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    tmp = Path(tempfile.mkdtemp(prefix="conveyor-stream-bench-"))
    with ExitStack() as stack:
        bootstrap = stack.enter_context(running_kafka(tmp / "kafka"))
        pg = stack.enter_context(running_postgres())
        redis_url = stack.enter_context(running_redis(tmp / "redis"))
        uri = f"kafka://{bootstrap}"
        store = make_store(tmp / "store")
        topic = f"events-{uuid.uuid4().hex[:6]}"
        publish_s = publish_events(uri, topic, args.events)
        passive = {
            "PostgreSQL": drain(store, uri, topic, pg.url, args.events, args.batch, "PostgreSQL"),
            "Redis": drain(store, uri, topic, redis_url, args.events, args.batch, "Redis"),
        }
        one = one_at_a_time(store, uri, topic, pg.url, args.baseline_events)
        passive["one_at_a_time"] = one
        for name in ("PostgreSQL", "Redis"):
            ratio = passive[name]["events_per_s"] / one["events_per_s"]
            print(f"{name}: {ratio:.1f}x the one-at-a-time consumer", flush=True)
        results = {
            "machine": f"{platform.python_version()}, {os.cpu_count()} cores",
            "kafka": os.environ.get("KAFKA_VERSION", "4.4.0"),
            "publish_events_per_s": args.events / publish_s,
            "passive": passive,
            "active": active(store, uri, args.rate, args.seconds, tmp),
        }
    write_results(results)
    print(f"results in {RESULTS / 'stream.md'}")


if __name__ == "__main__":
    main()
