"""An embedded Airflow: a private AIRFLOW_HOME with SQLite metadata, runs made in-process by `dag.test()`.

Runs, task states, tries and XComs live in Airflow's own metadata, so `airflow standalone` pointed at the
same home shows them in the UI. A rerun clears the chosen tasks and their downstream tasks with Airflow's
clear (what the UI's "Clear" does), then runs the cleared tasks in-process the way `dag.test()` does; tasks
that were not cleared keep their state and XComs, so upstream work is reused, not redone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from conveyor.errors import ConveyorError, InvalidSetting, MissingExtra, NotFound, first_line

DEFAULT_HOME = ".conveyor/airflow"
STUCK_AFTER = 30.0  # seconds with nothing to run and nothing waiting: a run that cannot finish
DEFAULT_DAGS = "dags"


@dataclass
class TaskRow:
    task_id: str
    state: str
    tries: int
    seconds: float | None


@dataclass
class RunRow:
    run_id: str
    state: str
    started: dt.datetime | None
    seconds: float | None
    tasks: list[TaskRow]


def environment(home: Path, dags_folder: Path) -> dict[str, str]:
    """The settings that make Airflow private to this home: its own SQLite metadata, this dags folder only."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
    }


class Embedded:
    """One Airflow home and dags folder; every method works on the metadata in that home."""

    def __init__(self, home: str | Path = DEFAULT_HOME, dags_folder: str | Path = DEFAULT_DAGS) -> None:
        self.home = Path(home).resolve()
        self.dags_folder = Path(dags_folder).resolve()
        self.log_path = self.home / "logs" / "conveyor.log"
        self._ready = False

    # --- setup ------------------------------------------------------------------------------------
    def _activate(self) -> None:
        if self._ready:
            return
        env = environment(self.home, self.dags_folder)
        if sys.modules.get("airflow") is not None and os.environ.get("AIRFLOW_HOME") != env["AIRFLOW_HOME"]:
            raise InvalidSetting("Airflow is already configured in this process for another AIRFLOW_HOME")
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        os.environ.update(env)
        try:
            import airflow  # noqa: F401  (reads the settings above once, at import)
        except ImportError:
            raise MissingExtra("apache-airflow", "airflow") from None
        self._migrate()
        self._ready = True

    def _migrate(self) -> None:
        """`airflow db migrate`, once per Airflow version (a marker beside the database records it)."""
        import airflow
        from airflow.utils import db

        marker = self.home / ".migrated"
        if marker.exists() and marker.read_text() == airflow.__version__:
            return
        with self.quiet():
            db.upgradedb()
        marker.write_text(airflow.__version__)

    @contextlib.contextmanager
    def quiet(self) -> Iterator[IO[str]]:
        """Send everything Airflow prints (its logs, the tasks' logs) to the home's log file; yield the terminal."""
        sys.stdout.flush()
        sys.stderr.flush()
        terminal = os.fdopen(os.dup(1), "w", buffering=1)
        saved = os.dup(1), os.dup(2)
        with open(self.log_path, "a") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield terminal
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
                terminal.close()

    def dag(self, dag_id: str) -> Any:
        """The DAG `dag_id` from the dags folder, or one line per file that does not import."""
        if not self.dags_folder.is_dir():
            raise NotFound(
                f"no dags folder {self.dags_folder}: write a DAG there with  conveyor pipeline init {dag_id} "
                f"--dags-folder {self.dags_folder}"
            )
        self._activate()
        from airflow.dag_processing.dagbag import DagBag

        with self.quiet():
            bag = DagBag(str(self.dags_folder))
        if bag.import_errors:
            shown = "; ".join(
                f"{Path(path).name}: {_last_line(err)}" for path, err in sorted(bag.import_errors.items())
            )
            raise ConveyorError(f"DAG files in {self.dags_folder} do not import: {shown}")
        found = bag.get_dag(dag_id)
        if found is None:
            known = ", ".join(sorted(bag.dag_ids)) or "none"
            raise NotFound(
                f"no DAG {dag_id!r} in {self.dags_folder} (DAGs there: {known}); "
                f"write one with  conveyor pipeline init {dag_id} --dags-folder {self.dags_folder}"
            )
        return found

    # --- runs -------------------------------------------------------------------------------------
    def run(self, dag_id: str, conf: Mapping[str, Any] | None = None, out: IO[str] | None = None) -> RunRow:
        """One DAG run, in this process, to its end; progress lines go to `out` as tasks finish."""
        dag = self.dag(dag_id)
        with self.quiet() as terminal, _progress(out or terminal):
            dr = dag.test(run_conf=dict(conf or {}))
        return self.describe(dag_id, dr.run_id)

    def runs(self, dag_id: str, limit: int = 20) -> list[RunRow]:
        self._activate()
        from airflow import settings
        from airflow.models.dagrun import DagRun
        from sqlalchemy import select

        with settings.Session() as session:
            found = session.scalars(
                select(DagRun.run_id).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).limit(limit)
            ).all()
        return [self.describe(dag_id, run_id) for run_id in found]

    def describe(self, dag_id: str, run_id: str) -> RunRow:
        self._activate()
        from airflow import settings
        from airflow.models.dagrun import DagRun
        from airflow.models.taskinstance import TaskInstance
        from sqlalchemy import select

        with settings.Session() as session:
            dr = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
            if dr is None:
                known = [r.run_id for r in self.runs(dag_id, limit=5)] if dag_id else []
                raise NotFound(f"{dag_id} has no run {run_id!r}; latest: {', '.join(known) or 'none'}")
            tis = session.scalars(
                select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
            ).all()
            order = _order(tis)
            tasks = [
                TaskRow(ti.task_id, str(ti.state or "none"), ti.try_number or 0, _seconds(ti.start_date, ti.end_date))
                for ti in sorted(tis, key=lambda t: order.get(t.task_id, 0))
            ]
            return RunRow(dr.run_id, str(dr.state), dr.start_date, _seconds(dr.start_date, dr.end_date), tasks)

    def result(self, dag_id: str, run_id: str, task_id: str) -> Any:
        """What task `task_id` of the run returned (its XCom), or None."""
        self._activate()
        from airflow import settings
        from airflow.models.xcom import XComModel
        from sqlalchemy import select

        with settings.Session() as session:
            value = session.scalar(
                select(XComModel.value).where(
                    XComModel.dag_id == dag_id,
                    XComModel.run_id == run_id,
                    XComModel.task_id == task_id,
                    XComModel.key == "return_value",
                )
            )
        return XComModel.deserialize_value(_Row(value)) if value is not None else None

    def report(self, dag_id: str, run_id: str) -> str | None:
        result = self.result(dag_id, run_id, "report")
        return result.get("text") if isinstance(result, dict) else None

    def resolve_run(self, dag_id: str, run_id: str) -> str:
        """A run id as given, or the newest run's for "latest"."""
        if run_id != "latest":
            return run_id
        newest = self.runs(dag_id, limit=1)
        if not newest:
            raise NotFound(f"{dag_id} has no runs yet: conveyor pipeline run {dag_id}")
        return newest[0].run_id

    def rerun(self, dag_id: str, run_id: str, *, from_task: str | None = None, out: IO[str] | None = None) -> RunRow:
        """Clear the failed tasks (or `from_task`) and everything downstream of them, then run what was cleared.

        `run_id` "latest" is the newest run."""
        dag = self.dag(dag_id)
        run_id = self.resolve_run(dag_id, run_id)
        from airflow import settings
        from airflow.models.dagbag import DBDagBag
        from airflow.models.dagrun import DagRun
        from airflow.utils.state import DagRunState
        from sqlalchemy import select

        with settings.Session() as session:
            dr = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
            if dr is None:
                self.describe(dag_id, run_id)  # raises NotFound naming the latest runs
            if from_task is None:
                roots = [ti.task_id for ti in dr.get_task_instances(session=session) if ti.state == "failed"]
                if not roots:
                    raise InvalidSetting(f"run {run_id} has no failed task; rerun part of it with --from TASK")
            else:
                if from_task not in dag.task_dict:
                    raise InvalidSetting(f"{dag_id} has no task {from_task!r}; tasks: {', '.join(dag.task_ids)}")
                roots = [from_task]
            scheduler_dag = DBDagBag().get_dag_for_run(dr, session=session)
            chosen = scheduler_dag.partial_subset(task_ids=roots, include_downstream=True, include_upstream=False)
            with self.quiet():
                scheduler_dag.clear(
                    task_ids=list(chosen.task_dict),
                    run_id=run_id,
                    session=session,
                    dag_run_state=DagRunState.QUEUED,
                )
            session.commit()
        with self.quiet() as terminal, _progress(out or terminal):
            _drive(dag, dag_id, run_id)
        return self.describe(dag_id, run_id)


@dataclass
class _Row:
    value: Any


def _drive(dag: Any, dag_id: str, run_id: str) -> None:
    """Run a queued DAG run's schedulable tasks in this process until it ends: the loop `dag.test()` runs,
    for a run that already exists."""
    from airflow import settings
    from airflow.models.dagbag import DBDagBag
    from airflow.models.dagrun import DagRun
    from airflow.sdk import timezone
    from airflow.sdk.definitions.dag import _run_task
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import select

    WAITING = {TaskInstanceState.UP_FOR_RETRY, TaskInstanceState.UP_FOR_RESCHEDULE, TaskInstanceState.DEFERRED}
    DONE = {TaskInstanceState.SUCCESS, TaskInstanceState.FAILED, TaskInstanceState.SKIPPED,
            TaskInstanceState.UPSTREAM_FAILED, TaskInstanceState.REMOVED}  # fmt: skip
    session = settings.Session()
    try:
        dr = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        dr.dag = DBDagBag().get_dag_for_run(dr, session=session)
        dr.state = DagRunState.RUNNING
        dr.end_date = None
        session.commit()
        idle_since = time.monotonic()
        while dr.state == DagRunState.RUNNING:
            session.expire_all()
            schedulable, _ = dr.update_state(session=session)
            for ti in schedulable:
                if ti.state != TaskInstanceState.UP_FOR_RESCHEDULE:
                    ti.try_number += 1
                ti.state = TaskInstanceState.SCHEDULED
                ti.scheduled_dttm = timezone.utcnow()
            session.commit()
            tis = dr.get_task_instances(session=session)
            ready = [t for t in tis if t.state == TaskInstanceState.SCHEDULED]
            for ti in ready:
                with contextlib.suppress(Exception):  # a failing task is recorded in its state, as dag.test() does
                    _run_task(ti=ti, task=dag.task_dict[ti.task_id])
            if ready:
                idle_since = time.monotonic()
                continue
            if not any(t.state in WAITING for t in tis) and time.monotonic() - idle_since > STUCK_AFTER:
                pending = ", ".join(f"{t.task_id} ({t.state or 'none'})" for t in tis if t.state not in DONE)
                raise ConveyorError(f"run {run_id} cannot go on: no task can be scheduled; pending: {pending}")
            time.sleep(0.5)  # waiting out a retry delay
    finally:
        session.close()


@contextlib.contextmanager
def _progress(out: IO[str]) -> Iterator[None]:
    """Print a line per task as it ends (Airflow's listener hooks, called where the task runs: here)."""
    from airflow.listeners import hookimpl
    from airflow.sdk.listener import get_listener_manager

    class Lines:
        def __init__(self) -> None:
            self.started: dict[str, float] = {}

        def _line(self, ti: Any, state: str, detail: str = "") -> None:
            took = time.perf_counter() - self.started.pop(ti.task_id, time.perf_counter())
            out.write(f"  {ti.task_id:<14} {state:<15} {took:6.1f}s  try {ti.try_number}{detail}\n")
            out.flush()

        @hookimpl
        def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
            self.started[task_instance.task_id] = time.perf_counter()

        @hookimpl
        def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
            self._line(task_instance, "success")

        @hookimpl
        def on_task_instance_skipped(self, previous_state: Any, task_instance: Any) -> None:
            self._line(task_instance, "skipped")

        @hookimpl
        def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: Any) -> None:
            from airflow.sdk.exceptions import AirflowFailException

            # Airflow calls this hook for a try that will be retried too; the task's policy tells which
            retries = getattr(getattr(task_instance, "task", None), "retries", 0) or 0
            again = task_instance.try_number <= retries and not isinstance(error, AirflowFailException)
            state = "up_for_retry" if again else "failed"
            self._line(task_instance, state, f"  {_last_line(error)}" if error else "")

    lines = Lines()
    manager = get_listener_manager()
    manager.add_listener(lines)
    try:
        yield
    finally:
        manager.pm.unregister(lines)


def _order(tis: list[Any]) -> dict[str, int]:
    from conveyor.workflow.settings import TASKS

    known = {t: i for i, t in enumerate(TASKS)}
    return {ti.task_id: known.get(ti.task_id, len(known)) for ti in tis}


def _seconds(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    return round((end - start).total_seconds(), 1) if start and end else None


def _last_line(error: Any) -> str:
    """The line of an error or traceback a person reads first: its last non-empty one."""
    if isinstance(error, BaseException):
        return first_line(error)
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
