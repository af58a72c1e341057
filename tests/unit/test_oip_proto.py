"""The shipped gRPC code is exactly what protoc makes of inference.proto, whose wire format is the published one.

Regenerate after editing src/conveyor/serve/oip/inference.proto (from the repository root):

    .venv/bin/python -m grpc_tools.protoc -I src --python_out=src --pyi_out=src --grpc_python_out=src \
        src/conveyor/serve/oip/inference.proto

Nothing here imports conveyor.serve.oip.inference_pb2: it registers the `inference` package in protobuf's default
pool, as tritonclient.grpc does, and one process cannot hold both (the integration tests import the client).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.serve import oip

pytest.importorskip("grpc_tools")

ROOT = Path(__file__).resolve().parents[2]
OIP = ROOT / "src/conveyor/serve/oip"
PROTO = "src/conveyor/serve/oip/inference.proto"
COMMAND = (
    ".venv/bin/python -m grpc_tools.protoc -I src --python_out=src --pyi_out=src --grpc_python_out=src "
    "src/conveyor/serve/oip/inference.proto"
)
GENERATED = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")


def protoc(*args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", "src", *args, PROTO], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_the_proto_states_the_command_that_regenerates_its_code():
    assert COMMAND in (OIP / "inference.proto").read_text()


def test_the_shipped_code_is_what_protoc_generates_from_the_proto(tmp_path):
    protoc(f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}")
    for name in GENERATED:
        fresh = (tmp_path / "conveyor/serve/oip" / name).read_bytes()
        assert (OIP / name).read_bytes() == fresh, f"{name} is stale: regenerate it with\n  {COMMAND}"


def ours(tmp_path: Path):
    """Our proto's descriptors in a private pool (the default one may hold tritonclient's `inference`)."""
    from google.protobuf import descriptor_pb2, descriptor_pool

    out = tmp_path / "inference.pb"
    protoc(f"--descriptor_set_out={out}")
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool.FindFileByName("conveyor/serve/oip/inference.proto")


def messages(file) -> dict:
    found = {}

    def visit(message) -> None:
        found[message.full_name] = message
        for nested in message.nested_types:
            visit(nested)

    for message in file.message_types_by_name.values():
        visit(message)
    return found


def test_every_message_and_rpc_is_wire_compatible_with_tritons(tmp_path):
    """Field numbers, types and labels of every message, and each RPC's path and types, as Triton's proto (the
    superset tritonclient.grpc speaks) declares them; a field Triton lacks must be a published OIP one."""
    from tritonclient.grpc import service_pb2 as triton

    ours_file = ours(tmp_path)
    theirs = messages(triton.DESCRIPTOR)
    oip_only = {"inference.ModelMetadataResponse.properties", "inference.ModelMetadataResponse.PropertiesEntry"}
    checked = 0
    for name, message in messages(ours_file).items():
        if name in oip_only:
            continue
        assert name in theirs, f"{name} is not a message of the protocol"
        for field in message.fields:
            if field.full_name in oip_only:
                continue
            other = theirs[name].fields_by_name.get(field.name)
            assert other is not None, f"{field.full_name} is not in the protocol"
            ours_type = (field.number, field.type, field.is_repeated, getattr(field.message_type, "full_name", None))
            their_type = (other.number, other.type, other.is_repeated, getattr(other.message_type, "full_name", None))
            assert ours_type == their_type, field.full_name
            checked += 1
    assert checked > 50
    service = ours_file.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"  # the path every client calls
    their_service = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert [m.name for m in service.methods] == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    ]
    for method in service.methods:
        other = their_service.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            other.input_type.full_name,
            other.output_type.full_name,
        )


def test_the_grpc_extra_and_port_are_checked_without_importing_grpc():
    """The command line checks them in gunicorn's master, which must not import grpc before it forks."""
    code = (
        "import sys; from conveyor.serve.oip import check_grpc; check_grpc('127.0.0.1', 0); "
        "print('grpc' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
    assert oip.require_grpc() is None
