"""`conveyor pipeline` on a real Airflow (in-process runs, SQLite metadata), a real SMTP server (aiosmtpd), a
real webhook receiver and the real server: what a team running the sales pipeline sees."""

from __future__ import annotations

import email
import itertools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from conveyor.sales_data import read_raw
from conveyor.store import ModelStore
from tests.conftest import conveyor, free_port

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.slow]

CHAIN = ["extract", "validate_data", "train", "evaluate", "promote", "forecast", "report"]


# --- real alert receivers ------------------------------------------------------------------------


@dataclass
class Mailbox:
    port: int
    messages: list = field(default_factory=list)

    def wait(self, n: int, timeout: float = 20) -> list:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.messages


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    """An SMTP server (aiosmtpd) on a free port, keeping every message it receives."""
    from aiosmtpd.controller import Controller

    box = Mailbox(free_port())

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            box.messages.append(email.message_from_bytes(envelope.content))
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=box.port)
    controller.start()
    yield box
    controller.stop()


@pytest.fixture
def webhook() -> Iterator[Mailbox]:
    """An HTTP server keeping the JSON bodies POSTed to it (what a Slack incoming webhook receives)."""
    box = Mailbox(free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            box.messages.append(json.loads(body))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", box.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield box
    server.shutdown()


@pytest.fixture
def project(tmp_path, mailbox, webhook):
    """A working directory with Airflow connections to the test's SMTP server and webhook receiver."""
    env = {
        **os.environ,
        "AIRFLOW_CONN_SMTP_DEFAULT": f"smtp://127.0.0.1:{mailbox.port}?disable_ssl=true&disable_tls=true",
        "AIRFLOW_CONN_TEAM_HOOK": json.dumps(
            {"conn_type": "slackwebhook", "password": f"http://127.0.0.1:{webhook.port}/services/T0/B0/x"}
        ),
    }

    def run(*args: str, check: bool = True):
        return conveyor(*args, check=check, cwd=tmp_path, env=env, timeout=600)

    run.path = tmp_path
    return run


def _metadata(path: Path, sql: str, *params) -> list[tuple]:
    """Read Airflow's own metadata database (the embedded home's SQLite file)."""
    with sqlite3.connect(path / ".conveyor" / "airflow" / "airflow.db") as db:
        return db.execute(sql, params).fetchall()


def _tries(path: Path, run_id: str) -> dict[str, tuple]:
    rows = _metadata(path, "SELECT task_id, try_number, state, start_date FROM task_instance WHERE run_id = ?", run_id)
    return {task: (tries, state, start) for task, tries, state, start in rows}


def _runs(project) -> list[dict]:
    return json.loads(project("pipeline", "runs", "sales", "--json").stdout)


def _demo_csv(path: Path, drop_date: str | None = None, noise: float = 0.0) -> Path:
    raw, _ = read_raw(None)
    if drop_date:
        raw = raw[raw["date"] != drop_date]
    if noise:  # corrupt all but the last 219 days (the backtest window): a model trained on it forecasts worse
        rng = np.random.default_rng(1)
        old = raw["date"] < "2016-05-27"
        raw.loc[old, "sales"] = raw.loc[old, "sales"] * rng.lognormal(0, noise, int(old.sum()))
    target = path / ("history.csv" if not noise else "noisy.csv")
    raw.to_csv(target, index=False)
    return target


# --- the DAG --------------------------------------------------------------------------------------


def test_the_dag_file_imports_in_airflow_and_its_graph_is_the_pipeline(project):
    project("pipeline", "init", "sales", "--email", "team@example.com", "--webhook-conn-id", "team_hook")
    script = """
import json, os, sys
os.environ.update(AIRFLOW_HOME=sys.argv[1], AIRFLOW__CORE__LOAD_EXAMPLES="False")
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(sys.argv[2])
dag = bag.dags["sales"]
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "downstream": {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks},
    "max_active_runs": dag.max_active_runs, "catchup": dag.catchup, "schedule": str(dag.schedule),
    "owner": dag.default_args["owner"], "retries": dag.default_args["retries"],
    "backoff": dag.default_args["retry_exponential_backoff"],
    "timeout": dag.default_args["execution_timeout"].total_seconds(),
    "alerts": "on_failure_callback" in dag.default_args,
    "report_rule": dag.get_task("report").trigger_rule,
}))
"""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", script, str(project.path / "home"), str(project.path / "dags")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["errors"] == {}
    downstream = info["downstream"]
    for before, after in itertools.pairwise(CHAIN):
        assert after in downstream[before], (before, downstream[before])
    assert downstream["report"] == []
    assert set(downstream) == set(CHAIN)
    assert info["max_active_runs"] == 1 and info["catchup"] is False and info["schedule"] == "@daily"
    assert info["owner"] == "data-team" and info["retries"] == 2 and info["backoff"] is True
    assert info["timeout"] == 3600 and info["alerts"] is True
    assert info["report_rule"] == "none_failed"
    refused = project("pipeline", "init", "sales", check=False)
    assert refused.returncode == 2 and "exists" in refused.stderr and "--force" in refused.stderr


def test_a_dag_file_that_does_not_import_is_named_in_one_line(project):
    (project.path / "dags").mkdir()
    (project.path / "dags" / "bad.py").write_text(
        "from conveyor.workflow import sales_pipeline\n# airflow dag\ndag = sales_pipeline('bad', range=0)\n"
    )
    proc = project("pipeline", "run", "bad", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "bad.py" in proc.stderr and "range must be between 1 and 3660" in proc.stderr
    missing = project("pipeline", "run", "nope", "--dags-folder", "nowhere", check=False)
    assert "no dags folder" in missing.stderr and "conveyor pipeline init nope" in missing.stderr


# --- whole runs -----------------------------------------------------------------------------------


def test_a_whole_run_promotes_forecasts_and_the_live_server_answers_from_the_new_version(project, serve):
    path = project.path
    project("train", "sales", "--range-max", "60", "--promote", "production")  # what serves today: version 1
    server = serve(
        path / "models", "sales", "--poll-interval", "0.5", "--predictions", f"sqlite:///{path}/predictions.db"
    )
    with server.client() as c:
        assert c.get("/predict", params={"range": 3}).json()["version"] == 1

    project("pipeline", "init", "sales")
    started = time.monotonic()
    proc = project("pipeline", "run", "sales")
    took = time.monotonic() - started
    for task in CHAIN:
        assert f"  {task} " in proc.stdout and "success" in proc.stdout
    assert "promoted: sales@production -> sales:2 (was 1)" in proc.stdout
    assert took < 120, f"a pipeline run took {took:.0f}s"

    store = ModelStore(path / "models")
    assert store.aliases("sales") == {"production": 2}
    manifest = store.manifest("sales:2")
    assert manifest["pipeline"]["dag_id"] == "sales" and manifest["pipeline"]["run_id"] == _runs(project)[0]["run_id"]
    with sqlite3.connect(path / "predictions.db") as db:
        per_series = dict(db.execute("SELECT series, COUNT(*) FROM predictions WHERE version = 2 GROUP BY series"))
    assert len(per_series) == 13 and set(per_series.values()) == {90}

    deadline = time.monotonic() + 20
    with server.client() as c:
        while c.get("/predict", params={"range": 3}).json()["version"] != 2:
            assert time.monotonic() < deadline, "the running server did not reload the promoted version"
            time.sleep(0.3)
        stored = c.get("/predictions/total").json()
    rows = stored["predictions"]
    assert len(rows) == 90 and {r["version"] for r in rows} == {2} and {r["model"] for r in rows} == {"sales"}
    runs = _runs(project)
    assert len(runs) == 1 and runs[0]["state"] == "success"
    assert [t["task_id"] for t in runs[0]["tasks"]] == CHAIN


def test_broken_data_fails_at_validation_alerts_the_team_and_rerun_failed_skips_extract(project, mailbox, webhook):
    path = project.path
    data = _demo_csv(path, drop_date="2016-06-01")  # a day of sales missing for every series
    project(
        "pipeline", "init", "sales", "--data", "history.csv", "--series-cols", "store_nbr,family",
        "--email", "team@example.com", "--webhook-conn-id", "team_hook",
    )  # fmt: skip
    failed = project("pipeline", "run", "sales", check=False)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "validate_data  failed" in failed.stdout and "2016-06-01" in failed.stdout
    run_id = _runs(project)[0]["run_id"]
    assert f"conveyor pipeline rerun sales '{run_id}' --failed" in failed.stderr
    before = _tries(path, run_id)
    assert before["extract"][:2] == (1, "success") and before["validate_data"][1] == "failed"
    assert before["train"][1] == "upstream_failed" and "  train          upstream_failed" in failed.stdout

    [mail] = mailbox.wait(1)
    assert "validate_data" in mail["Subject"] and mail["To"] == "team@example.com"
    body = mail.get_payload()[0].get_payload(decode=True).decode()
    for text in ("DAG:    sales", "task:   validate_data", run_id, "try:    1", "2016-06-01", "/tasks/validate_data"):
        assert text in body.replace("&#x27;", "'"), text
    [posted] = webhook.wait(1)
    assert "validate_data" in posted["text"] and run_id in posted["text"] and "2016-06-01" in posted["text"]

    _demo_csv(path)  # the data fixed where it lives
    assert data.exists()
    fixed = project("pipeline", "rerun", "sales", run_id, "--failed")
    assert not any(line.startswith("  extract ") for line in fixed.stdout.splitlines()), fixed.stdout
    assert "  validate_data  success" in fixed.stdout
    after = _tries(path, run_id)
    assert after["extract"] == before["extract"]  # not executed again: same try, same start
    assert after["validate_data"][:2] == (2, "success")
    assert all(after[t][1] == "success" for t in CHAIN)
    assert _runs(project)[0]["state"] == "success" and len(_runs(project)) == 1
    assert ModelStore(path / "models").aliases("sales") == {"production": 1}
    assert len(mailbox.messages) == 1  # nothing more to report

    again = project("pipeline", "rerun", "sales", "latest", "--from", "forecast")
    ran = [line.split()[0] for line in again.stdout.splitlines() if line.startswith("  ")]
    assert ran == ["forecast", "report"], again.stdout
    last = _tries(path, run_id)
    assert last["forecast"][0] == 2 and last["train"] == after["train"] and last["extract"] == before["extract"]


def test_a_worse_model_is_refused_by_the_gate_and_production_keeps_serving(project, mailbox, webhook, serve):
    path = project.path
    project("train", "sales", "--promote", "production")  # version 1, trained on clean history
    server = serve(path / "models", "sales", "--poll-interval", "0.5")
    _demo_csv(path, noise=0.6)
    project(
        "pipeline", "init", "sales", "--data", "noisy.csv", "--series-cols", "store_nbr,family",
        "--email", "team@example.com", "--webhook-conn-id", "team_hook",
    )  # fmt: skip
    proc = project("pipeline", "run", "sales")
    assert "  promote        skipped" in proc.stdout and "  forecast       skipped" in proc.stdout
    assert "gate: refused: sales:2 is worse than sales:1" in proc.stdout
    assert "not promoted: sales@production is unchanged" in proc.stdout
    store = ModelStore(path / "models")
    assert store.versions("sales") == [1, 2]  # registered, not promoted
    assert store.aliases("sales") == {"production": 1}
    [mail] = mailbox.wait(1)
    assert "refused by the gate" in mail["Subject"]
    [posted] = webhook.wait(1)
    assert "is worse than sales:1" in posted["text"] and "MASE" in posted["text"]
    time.sleep(1.5)  # two poll intervals: a server following the alias would have moved by now
    with server.client() as c:
        assert c.get("/predict", params={"range": 3}).json()["version"] == 1


def test_a_task_failing_twice_then_succeeding_is_retried_with_backoff(project, mailbox):
    path = project.path
    (path / "dags").mkdir()
    (path / "dags" / "sales.py").write_text(
        f'''"""An airflow DAG whose source is down for its first two tries (the fault is injected by the test)."""
import datetime as dt

from airflow.sdk import get_current_context

from conveyor.workflow import Alerts, sales_pipeline

dag = sales_pipeline(
    "sales", store={str(path / "models")!r}, predictions="sqlite:///{path / "predictions.db"}",
    retries=2, retry_delay=dt.timedelta(seconds=1), alerts=Alerts(email=("team@example.com",)),
)
extract = dag.get_task("extract")
read_source = extract.python_callable


def flaky(params=None, run_id=None):
    if get_current_context()["ti"].try_number <= 2:
        raise ConnectionError("the history database is not answering")
    return read_source(params=params, run_id=run_id)


extract.python_callable = flaky
'''
    )
    proc = project("pipeline", "run", "sales")
    assert proc.stdout.count("extract        up_for_retry") == 2, proc.stdout
    run_id = _runs(project)[0]["run_id"]
    tries = _tries(path, run_id)
    assert tries["extract"][:2] == (3, "success") and tries["report"][1] == "success"
    history = _metadata(
        path,
        "SELECT try_number, state, start_date, end_date FROM task_instance_history "
        "WHERE run_id = ? AND task_id = 'extract' ORDER BY try_number",
        run_id,
    )
    assert [(t, s) for t, s, _, _ in history] == [(1, "failed"), (2, "failed")]  # Airflow's record of each try
    starts = [h[2] for h in history] + [tries["extract"][2]]
    ends = [h[3] for h in history]
    gaps = [_seconds(starts[i + 1]) - _seconds(ends[i]) for i in range(2)]
    assert gaps[0] >= 1 and gaps[1] >= 2, gaps  # retry_delay 1 s, then doubled
    assert mailbox.messages == []  # a retried task is not a failure: no alert


def _seconds(stamp: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(stamp).timestamp()
