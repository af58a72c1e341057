"""One stream batch without a broker: decoding, validation, prediction and the dead letters of `process`."""

from __future__ import annotations

import os
import socket

import orjson
import pytest

from conveyor.errors import ConveyorError, InvalidInput
from conveyor.store import ModelStore
from conveyor.stream.broker import CORRELATION_ID, REPLY_TO, Message
from conveyor.stream.worker import StreamJob, is_transient, process


@pytest.fixture(scope="module")
def model(tmp_path_factory, iris_model):
    est, X = iris_model
    store = ModelStore(tmp_path_factory.mktemp("store"))
    store.add("iris", est, flavor="sklearn", example=X.iloc[:5])
    return store.load("iris")


def passive(**kw) -> StreamJob:
    return StreamJob("unused", "iris", "redis://x", "events", "g", sink="sqlite:///unused.db", key=("id",), **kw)


def msg(i: int, value: bytes | dict, **headers: str) -> Message:
    data = value if isinstance(value, bytes) else orjson.dumps(value)
    return Message(data, headers=headers, id=f"events/{i}")


def event(i: int, x0: object = 0.5) -> dict:
    return {"id": i, "x0": x0, "x1": -0.5, "x2": 0.1, "x3": 0.2}


def test_passive_rows_carry_inputs_predictions_model_and_event_id(model):
    out = process([msg(i, event(i, x0=i / 10)) for i in range(5)], model, passive())
    assert out.predicted == 5 and not out.dead
    rows = out.rows.set_index("id")
    assert list(rows.index) == [0, 1, 2, 3, 4]
    assert {"prediction", "proba_no", "proba_yes", "model", "version", "event_id"} <= set(rows.columns)
    assert rows.loc[3, "event_id"] == "events/3" and rows.loc[3, "x0"] == 0.3
    assert (rows["version"] == 1).all()


def test_the_latest_event_of_a_key_wins_within_a_batch(model):
    out = process([msg(0, event(7, x0=-3.0)), msg(1, event(7, x0=3.0))], model, passive())
    assert len(out.rows) == 1 and out.rows.iloc[0]["x0"] == 3.0 and out.rows.iloc[0]["event_id"] == "events/1"


def test_bad_messages_become_dead_letters_with_reasons(model):
    batch = [
        msg(0, event(0)),
        msg(1, b"{oops"),
        msg(2, b"\x80\x81"),
        msg(3, b"42"),
        msg(4, {"x0": 1, "x1": 1, "x2": 1, "x3": 1}),
        msg(5, event(5, x0="abc")),
        msg(6, event(6, x0=None)),
        msg(7, event(7)),
    ]
    out = process(batch, model, passive())
    assert out.predicted == 2 and sorted(out.rows["id"]) == [0, 7]
    reasons = {d.message.id: (d.kind, d.reason) for d in out.dead}
    assert set(reasons) == {f"events/{i}" for i in range(1, 7)}
    assert reasons["events/1"][1].startswith("malformed message: not UTF-8 JSON")
    assert reasons["events/3"][1] == "malformed message: expected a JSON object of model inputs, got int"
    assert reasons["events/4"][1] == "the event lacks key field(s) ['id'] (--key)"
    assert reasons["events/5"] == ("invalid_input", "'x0' must be a finite number, got 'abc'")
    assert "missing value for 'x0'" in reasons["events/6"][1]


def test_active_replies_go_to_each_reply_topic_with_the_correlation_id(model):
    job = StreamJob("unused", "iris", "redis://x", "requests", "g")
    batch = [
        msg(0, event(0), **{REPLY_TO: "a", CORRELATION_ID: "c0"}),
        msg(1, event(1), **{REPLY_TO: "b", CORRELATION_ID: "c1"}),
        msg(2, event(2, x0="bad"), **{REPLY_TO: "a", CORRELATION_ID: "c2"}),
    ]
    out = process(batch, model, job)
    assert out.rows is None and out.predicted == 2 and out.replied == 2
    (body, headers), (error, _) = out.replies["a"]
    reply = orjson.loads(body)
    assert reply[CORRELATION_ID] == "c0" and headers == {CORRELATION_ID: "c0"}
    assert reply["model"] == "iris" and reply["prediction"]["prediction"] in ("yes", "no")
    assert orjson.loads(error) == {
        CORRELATION_ID: "c2",
        "error": {"kind": "invalid_input", "message": "'x0' must be a finite number, got 'bad'"},
    }
    assert [d.message.id for d in out.dead] == ["events/2"]


def test_a_model_that_raises_on_one_row_only_loses_that_row(model):
    class Picky:
        def predict(self, frame):
            if (frame["x0"] == 13.0).any():
                raise ValueError("cannot predict 13")
            return model.predictor.predict(frame)

    from dataclasses import replace

    picky = replace(model, predictor=Picky())
    out = process([msg(i, event(i, x0=float(i))) for i in range(20)], picky, passive())
    assert out.predicted == 19 and 13 not in set(out.rows["id"])
    rows = out.rows.set_index("id")
    assert (rows["x0"] == rows.index.astype(float)).all() and rows["prediction"].notna().all()
    assert not set(rows.columns) & {"x0_x", "x0_y"} and rows.columns.is_unique
    (dead,) = out.dead
    assert dead.message.id == "events/13" and dead.kind == "prediction_failed" and "cannot predict 13" in dead.reason


def test_job_settings_are_checked_up_front():
    with pytest.raises(InvalidInput, match="--key and --keep describe stored predictions: they need --sink"):
        StreamJob("s", "m", "redis://x", "t", "g", key=("id",))
    with pytest.raises(InvalidInput, match="--sink must be a SQL URL or redis"):
        StreamJob("s", "m", "redis://x", "t", "g", sink="out.parquet")
    assert StreamJob("s", "m", "redis://x", "t", "g").dlq == "t.dlq"


def test_transient_failures_are_told_from_refusals():
    import sqlalchemy as sa

    assert is_transient(ConnectionRefusedError()) and is_transient(sa.exc.OperationalError("x", {}, Exception()))
    assert not is_transient(sa.exc.DataError("x", {}, Exception())) and not is_transient(ValueError("x"))
    # a sink's one-line error over the library's: its cause decides (the SQL sink wraps every write error)
    wrapped, refused = ConveyorError("cannot write to table 'p'"), ConveyorError("cannot write to table 'p'")
    wrapped.__cause__, refused.__cause__ = (
        sa.exc.OperationalError("x", {}, Exception()),
        sa.exc.DataError("x", {}, None),
    )
    assert is_transient(wrapped) and not is_transient(refused) and not is_transient(ConveyorError("no"))


# --- events and requests on one topic (issue 9, point 14) ---------------------------------------------------


def test_one_batch_stores_its_events_and_replies_to_its_requests(model):
    """The seed's one topic carries both: a request (with reply_to) is answered and never stored."""
    batch = [
        msg(0, event(1, x0=-3.0)),
        msg(1, event(1, x0=3.0), **{REPLY_TO: "replies", CORRELATION_ID: "c1"}),  # same key, a request
        msg(2, event(2)),
        msg(3, {"x0": 1, "x1": 1, "x2": 1, "x3": 1}, **{REPLY_TO: "replies", CORRELATION_ID: "c3"}),  # no key: fine
    ]
    out = process(batch, model, passive())
    assert not out.dead and out.predicted == 4 and out.replied == 2 and out.stored == 2
    rows = out.rows.set_index("id")
    assert sorted(rows.index) == [1, 2] and rows.loc[1, "x0"] == -3.0 and rows.loc[1, "event_id"] == "events/0"
    replies = [orjson.loads(body) for body, _ in out.replies["replies"]]
    assert [r[CORRELATION_ID] for r in replies] == ["c1", "c3"]
    assert all(r["prediction"]["prediction"] in ("yes", "no") for r in replies)


def test_a_worker_without_a_sink_answers_requests_and_dead_letters_events_with_the_reason(model):
    job = StreamJob("unused", "iris", "redis://x", "events", "g")
    out = process([msg(0, event(0)), msg(1, event(1), **{REPLY_TO: "r", CORRELATION_ID: "c"})], model, job)
    assert out.rows is None and out.replied == 1 and [d.message.id for d in out.dead] == ["events/0"]
    (dead,) = out.dead
    assert dead.kind == "no_sink"
    assert dead.reason == (
        "an event without reply_to reached a worker without --sink: nothing can store it "
        "(start every worker of group 'g' with --sink, or send requests with reply_to)"
    )


def test_redis_consumers_are_unique_per_worker_and_options_are_checked():
    """Issue 9 point 13: not the host name alone, which two workers on one host (or two pods as pid 1) share."""
    from conveyor.stream.broker import open_broker

    first, second = open_broker("redis://127.0.0.1:1/0"), open_broker("redis://127.0.0.1:1/0")
    assert first.consumer != second.consumer and first.consumer.startswith(f"{socket.gethostname()}-{os.getpid()}-")
    assert open_broker("redis://127.0.0.1:1/0?consumer=w1&claim_idle=8").consumer == "w1"
    with pytest.raises(InvalidInput, match=r"unknown option\(s\) \['claim_idel'\]"):
        open_broker("redis://127.0.0.1:1/0?claim_idel=3")
    with pytest.raises(InvalidInput, match="claim_idle must be a positive number, not 'soon'"):
        open_broker("redis://127.0.0.1:1/0?claim_idle=soon")
