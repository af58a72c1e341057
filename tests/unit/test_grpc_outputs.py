"""gRPC answers written straight from the batch's values are the general path's answers, byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("grpc")

CHECK = Path(__file__).with_name("grpc_outputs_check.py")
sys.path.insert(0, str(CHECK.parent))
from grpc_outputs_check import CASES  # noqa: E402  (no protobuf import: CASES is plain data)


def test_the_direct_writer_answers_what_the_general_path_answers_or_declines():
    proc = subprocess.run([sys.executable, str(CHECK)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    expected = {(name, False): typed for name, _, _, _, typed, _ in CASES}
    expected |= {(name, True): raw for name, _, _, _, _, raw in CASES}
    assert len(report) == 2 * len(CASES)
    for row in report:
        assert row["same"], row  # written: the same bytes; declined: the response left empty
        assert row["written"] == expected[row["case"], row["raw"]], row
