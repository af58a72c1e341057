"""`conveyor stream`: run a stream worker, publish events, send a request and await its reply.

`conveyor stream NAME --broker ... --topic ... --group ...` runs the worker (the same as `stream run NAME`).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from conveyor.cli_options import STORE_OPTION, Group
from conveyor.errors import InvalidInput

BROKER = click.option(
    "--broker",
    envvar="CONVEYOR_BROKER",
    required=True,
    metavar="URI",
    help="kafka://host:9092, pubsub://PROJECT or redis://host:6379 (env CONVEYOR_BROKER).",
)
TOPIC = click.option("--topic", required=True, help="Topic (Kafka, Pub/Sub) or stream key (Redis).")


class StreamGroup(Group):
    """A first argument that is not a subcommand is a model name: `stream NAME ...` means `stream run NAME ...`."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)


@click.group(cls=StreamGroup)
def stream() -> None:
    """Streaming predictions on Kafka, Pub/Sub or Redis Streams.

    \b
    conveyor stream NAME --broker URI --topic T --group G --sink URL --key COL
    conveyor stream publish --broker URI --topic T events.jsonl
    conveyor stream request --broker URI --topic T '{"series": "total", "range": 3}'
    """


@stream.command("run")
@click.argument("model", metavar="NAME[:VERSION|@ALIAS]")
@BROKER
@TOPIC
@click.option("--group", required=True, help="Consumer group (Kafka, Redis) or subscription (Pub/Sub).")
@click.option(
    "--sink",
    default=None,
    metavar="URL",
    help="Store events' predictions here: sqlite:///..., postgresql://..., redis://... [none: answer requests only].",
)
@click.option("--key", default=None, metavar="COLS", help="Event field(s) keying the stored prediction [event id].")
@click.option(
    "--keep",
    default=None,
    metavar="COLS",
    help="More event fields to store beside the prediction [none: the key and the model's inputs only].",
)
@click.option("--table", default="predictions", show_default=True, help="SQL table or Redis key prefix.")
@click.option("--dlq", default=None, metavar="TOPIC", help="Dead-letter topic [TOPIC.dlq].")
@click.option("--batch", default=500, show_default=True, type=click.IntRange(1, 100_000), help="Messages per batch.")
@click.option(
    "--metrics-port",
    default=None,
    type=click.IntRange(1, 65535),
    help="Serve Prometheus /metrics here, from when the worker has joined its group.",
)
@click.option(
    "--reload-interval", default=5.0, show_default=True, type=float, help="Seconds between checks of the alias."
)
@click.option(
    "--stop-after-idle", default=None, type=float, metavar="SECONDS", help="Exit after this long without messages."
)
@click.option("--max-messages", default=None, type=click.IntRange(1), help="Exit after consuming this many.")
@click.option("-v", "--verbose", is_flag=True, help="Log every retry and dead letter.")
@STORE_OPTION
def run_cmd(model, broker, topic, group, sink, key, keep, table, dlq, batch, metrics_port, reload_interval,
            stop_after_idle, max_messages, verbose, store):  # fmt: skip
    """Consume TOPIC, predict with MODEL in batches, deliver, then ack.

    A request (a message with reply_to, as `stream request` sends) gets its prediction back; an event (any other
    message) has its prediction stored in --sink. Bad messages go to the dead-letter topic with their reason;
    SIGTERM finishes the batch in hand.
    """
    from conveyor.stream.worker import StreamJob, Worker

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s"
    )
    logging.getLogger("conveyor").setLevel(logging.INFO)
    job = StreamJob(
        store=store, model=model, broker=broker, topic=topic, group=group, sink=sink,
        key=_fields(key), keep=_fields(keep), table=table, dlq=dlq, batch=batch,
        reload_interval=reload_interval, stop_after_idle=stop_after_idle, max_messages=max_messages,
        metrics_port=metrics_port,
    )  # fmt: skip
    counts = Worker(job).run()
    click.echo(
        f"consumed {_messages(counts['consumed'])}: {counts['stored']:,} stored, {counts['replied']:,} replied, "
        f"{counts['dead_lettered']:,} dead-lettered to {job.dlq}"
    )


@stream.command("publish")
@BROKER
@TOPIC
@click.argument("source", default="-", metavar="[FILE|-]")
@click.option("--key", "key_field", default=None, metavar="FIELD", help="Use this JSON field as the message key.")
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(1), help="Messages per publish call.")
def publish_cmd(broker, topic, source, key_field, batch):
    """Publish each JSON line of FILE (or stdin) as one UTF-8 message (the seed's publisher).

    A line that is not a JSON object is refused with its line number before anything is sent.
    """
    import orjson

    from conveyor.stream.broker import open_broker

    _one_shot()
    stream_in = sys.stdin.buffer if source == "-" else click.open_file(source, "rb")
    lines = [line.strip() for line in stream_in]
    values, keys = [], []
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"line {number} of {source} is not JSON: {exc}") from None
        if not isinstance(record, dict):
            raise InvalidInput(f"line {number} of {source} is not a JSON object")
        values.append(line)
        keys.append(str(record.get(key_field, "")).encode() if key_field else None)
    from rich.progress import Progress

    out = open_broker(broker)
    try:
        out.ensure_topic(topic)
        # A bar for long publishes from a file; none for short ones or stdin pipes.
        with Progress(transient=True, disable=source == "-" or len(values) < 50_000) as progress:
            task = progress.add_task("publishing", total=len(values))
            for start in range(0, len(values), batch):
                out.publish(topic, values[start : start + batch], keys=keys[start : start + batch])
                progress.advance(task, len(values[start : start + batch]))
    finally:
        out.close()
    click.echo(f"published {_messages(len(values))} to {topic}")


@stream.command("request")
@BROKER
@TOPIC
@click.argument("payload", metavar="JSON|FILE|-")
@click.option("--reply-topic", default=None, help="Where the worker replies [TOPIC.replies].")
@click.option("--timeout", default=10.0, show_default=True, type=float, help="Seconds to wait for the reply.")
def request_cmd(broker, topic, payload, reply_topic, timeout):
    """Send one request (a JSON object, a file holding one, or stdin) and print the worker's reply."""
    import orjson

    from conveyor.stream.client import RequestClient

    _one_shot()
    text = sys.stdin.read() if payload == "-" else payload
    if not text.lstrip().startswith("{"):
        try:
            with click.open_file(text) as f:
                text = f.read()
        except OSError as exc:
            raise InvalidInput(f"the request is neither a JSON object nor a readable file: {exc}") from None
    try:
        record = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request is not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise InvalidInput("the request must be a JSON object of model inputs")
    with RequestClient(broker, topic, reply_topic) as client:
        reply = client.request(record, timeout)
    click.echo(orjson.dumps(reply, option=orjson.OPT_INDENT_2).decode())
    if "error" in reply:
        sys.exit(2)


def _one_shot() -> None:
    """A command that publishes and exits prints its result or one error line: the clients' passing retries
    (a fresh Kafka broker loading its coordinator, say) are logged only when they end in an error."""
    logging.getLogger("conveyor.stream").setLevel(logging.ERROR)


def _fields(text: str | None) -> tuple[str, ...]:
    return tuple(f.strip() for f in text.split(",") if f.strip()) if text else ()


def _messages(n: int) -> str:
    return f"{n:,} message" + ("" if n == 1 else "s")
