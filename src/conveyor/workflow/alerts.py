"""Alerts to the team that owns a pipeline, sent by Airflow's own notifiers (SMTP e-mail, Slack webhook).

A task that fails for good (after its retries) and a model the gate refuses both alert: the message names
the DAG, the task, the run, the try, the error's last lines and the task's log in the Airflow UI.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from conveyor.workflow.settings import Alerts

log = logging.getLogger(__name__)
LAST_LINES = 8


@dataclass
class Alert:
    subject: str
    text: str

    def html(self) -> str:
        from html import escape

        return f"<pre>{escape(self.text)}</pre>"


def failure_alert(context: Mapping[str, Any]) -> Alert:
    """What went wrong, from Airflow's callback context."""
    ti = context["ti"]
    error = context.get("exception")
    if isinstance(error, BaseException):
        message = f"{type(error).__name__}: {error}"
        frames = "".join(traceback.format_exception(error)).rstrip().splitlines()[:-1][-LAST_LINES:]
        detail = message + ("\n\nlast lines of the traceback:\n" + "\n".join(frames) if frames else "")
    else:
        detail = str(error or "the task failed (no error recorded)")
    head = f"[{ti.dag_id}] task {ti.task_id} failed"
    return Alert(head, _body(head, ti, context, detail))


def gate_alert(context: Mapping[str, Any], reason: str) -> Alert:
    ti = context["ti"]
    head = f"[{ti.dag_id}] new model refused by the gate"
    return Alert(head, _body(head, ti, context, reason))


def _body(head: str, ti: Any, context: Mapping[str, Any], detail: str) -> str:
    return "\n".join(
        [
            head,
            "",
            f"DAG:    {ti.dag_id}",
            f"task:   {ti.task_id}",
            f"run:    {context.get('run_id') or ti.run_id}",
            f"try:    {ti.try_number}",
            f"log:    {ti.log_url}",
            "",
            detail,
        ]
    )


def send(alerts: Alerts, alert: Alert, context: Mapping[str, Any]) -> list[str]:
    """Send `alert` to every configured channel; one channel failing does not stop the others. Returns the
    channels that failed (each also logged), so the caller can tell."""
    failed = []
    if alerts.email:
        try:
            from airflow.providers.smtp.notifications.smtp import SmtpNotifier

            SmtpNotifier(
                to=list(alerts.email),
                from_email=alerts.from_email,
                subject=alert.subject,
                html_content=alert.html(),
                smtp_conn_id=alerts.smtp_conn_id,
            ).notify(context)
        except Exception as exc:  # an alert channel down must not hide the failure it reports
            log.error("could not e-mail %s through %s: %s", alerts.email, alerts.smtp_conn_id, exc)
            failed.append("email")
    if alerts.webhook_conn_id:
        try:
            from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

            SlackWebhookNotifier(slack_webhook_conn_id=alerts.webhook_conn_id, text=alert.text).notify(context)
        except Exception as exc:
            log.error("could not post to webhook %s: %s", alerts.webhook_conn_id, exc)
            failed.append("webhook")
    return failed


def on_failure(alerts: Alerts) -> Callable[[Mapping[str, Any]], None]:
    """A task `on_failure_callback`: Airflow calls it once a task has failed its last try."""

    def callback(context: Mapping[str, Any]) -> None:
        send(alerts, failure_alert(context), context)

    return callback
