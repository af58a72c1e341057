"""`conveyor serve` settings: a bad value is one line naming the flag or variable and what it allows (issue 9, point 6)."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.conftest import assert_one_line_error, conveyor, free_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("env", "args", "text"),
    [
        ({"CONVEYOR_PORT": "abc"}, (), "CONVEYOR_PORT='abc': must be an integer from 0 to 65535"),
        ({"CONVEYOR_WORKERS": "0"}, (), "CONVEYOR_WORKERS='0': must be an integer from 1 to 64"),
        ({"CONVEYOR_MAX_BATCH_ROWS": "-5"}, (), "CONVEYOR_MAX_BATCH_ROWS='-5': must be an integer >= 1"),
        ({"CONVEYOR_REQUEST_TIMEOUT": "0"}, (), "CONVEYOR_REQUEST_TIMEOUT='0': must be a number > 0"),
        ({"CONVEYOR_MAX_WAIT_MS": "soon"}, (), "CONVEYOR_MAX_WAIT_MS='soon': must be a number from 0 to 1000"),
        ({"CONVEYOR_LOG_LEVEL": "loud"}, (), "CONVEYOR_LOG_LEVEL='loud': must be one of debug, info, warning, error"),
        ({"CONVEYOR_GC_THRESHOLDS": "lots"}, (), "CONVEYOR_GC_THRESHOLDS='lots': must be three integers"),
        ({"CONVEYOR_MAX_FORECAST_STEPS": "1e9x"}, (), "CONVEYOR_MAX_FORECAST_STEPS='1e9x': must be an integer >= 1"),
        ({}, ("--workers", "0"), "--workers '0': must be an integer from 1 to 64"),
        ({}, ("--port", "abc"), "--port 'abc': must be an integer from 0 to 65535"),
        ({}, ("--max-body-bytes", "12"), "--max-body-bytes '12': must be an integer >= 1024"),
        ({}, ("--metrics-port", "0"), "--metrics-port '0': must be an integer from 1 to 65535"),
        ({"CONVEYOR_PORT": "9311"}, ("--metrics-port", "9311"), "the metrics port must differ from the service's"),
        # a flag overrides the variable, and the message names whichever was used
        ({"CONVEYOR_WORKERS": "2"}, ("--workers", "99"), "--workers '99': must be an integer from 1 to 64"),
    ],
)
def test_a_bad_setting_is_one_line_whatever_its_source(store_dir, env, args, text):
    env = {**os.environ, "CONVEYOR_PORT": str(free_port()), **env}  # should the setting be accepted: a free port
    proc = conveyor("serve", "iris", "--store", str(store_dir), *args, env=env, check=False, timeout=60)
    assert_one_line_error(proc, 2, text)


def test_two_bad_settings_are_named_on_one_line(store_dir):
    env = {**os.environ, "CONVEYOR_PORT": "abc", "CONVEYOR_WORKERS": "0"}
    proc = conveyor("serve", "iris", "--store", str(store_dir), env=env, check=False, timeout=60)
    assert_one_line_error(proc, 2, "CONVEYOR_PORT='abc': must be an integer from 0 to 65535; CONVEYOR_WORKERS='0'")


def test_serve_help_shows_every_setting_with_its_variable():
    text = conveyor("serve", "--help").stdout
    for flag, var in [
        ("--port", "CONVEYOR_PORT"),
        ("--workers", "CONVEYOR_WORKERS"),
        ("--max-body-bytes", "CONVEYOR_MAX_BODY_BYTES"),
        ("--max-forecast-steps", "CONVEYOR_MAX_FORECAST_STEPS"),
        ("--request-timeout", "CONVEYOR_REQUEST_TIMEOUT"),
        ("--predictions", "CONVEYOR_PREDICTIONS"),
    ]:
        assert flag in text and var in text, (flag, var)


def test_an_empty_variable_is_unset(store_dir, serve):
    """A manifest or shell often sets a variable to "" to mean nothing: it falls back to the default."""
    server = serve(
        store_dir, "iris", env={"CONVEYOR_METRICS_PORT": "", "CONVEYOR_WORKERS": "", "CONVEYOR_LOG_LEVEL": ""}
    )
    assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 200  # no metrics port: here
