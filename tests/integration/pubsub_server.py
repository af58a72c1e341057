"""A private Pub/Sub emulator (Google's pstest fake, built from tools/pubsub-emulator) on a free port.

The fixture yields "127.0.0.1:PORT" and sets nothing globally: tests pass it on as PUBSUB_EMULATOR_HOST
themselves (monkeypatch), so tests that must not see an emulator stay unaffected.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.conftest import free_port, wait_for_port

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "pubsub-emulator.sh"


def _unavailable(message: str) -> NoReturn:
    # Under CI the emulator must be there; on a developer's machine without Go the tests just skip.
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory) -> Iterator[str]:
    if shutil.which("go") is None:
        _unavailable("go not found: the Pub/Sub emulator is built from tools/pubsub-emulator with Go")
    # Idempotent: seconds when already built, about a minute from empty Go caches.
    build = subprocess.run([str(BUILD_SCRIPT), "build"], capture_output=True, text=True, timeout=900)
    if build.returncode != 0:
        reason = (build.stderr.strip().splitlines() or ["no output"])[-1]
        _unavailable(f"pubsub-emulator build failed: {reason}")
    binary = build.stdout.strip().splitlines()[-1]

    port = free_port()
    log = tmp_path_factory.mktemp("pubsub") / "emulator.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [binary, "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        try:
            wait_for_port(port, proc, "pubsub-emulator")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {log.read_text().strip()}") from None
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
