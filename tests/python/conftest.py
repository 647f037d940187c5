"""Fixtures for the gRPC contract tests.

The Python stubs are generated from `proto/` at test time (into a temporary
directory), so the tests always run against the contract in this checkout.
The gateway address comes from `STREAMBUS_GATEWAY` (e.g. `127.0.0.1:7400`).
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "proto"
PUBLIC_PROTOS = sorted(
    str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "streambus" / "v1").glob("*.proto")
)


@pytest.fixture(scope="session")
def pb():
    """The generated modules: pb.admin, pb.produce, pb.consume, pb.group,
    pb.common and the *_grpc stubs."""
    out = tempfile.mkdtemp(prefix="streambus-pb-")
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *PUBLIC_PROTOS,
    ]
    subprocess.run(cmd, check=True, cwd=PROTO_ROOT)
    sys.path.insert(0, out)
    from streambus.v1 import admin_pb2, admin_pb2_grpc  # noqa: E402
    from streambus.v1 import common_pb2  # noqa: E402
    from streambus.v1 import consume_pb2, consume_pb2_grpc  # noqa: E402
    from streambus.v1 import group_pb2, group_pb2_grpc  # noqa: E402
    from streambus.v1 import produce_pb2, produce_pb2_grpc  # noqa: E402

    class Modules:
        admin, admin_grpc = admin_pb2, admin_pb2_grpc
        common = common_pb2
        consume, consume_grpc = consume_pb2, consume_pb2_grpc
        group, group_grpc = group_pb2, group_pb2_grpc
        produce, produce_grpc = produce_pb2, produce_pb2_grpc

    return Modules


@pytest.fixture(scope="session")
def gateway_addr():
    addr = os.environ.get("STREAMBUS_GATEWAY")
    if not addr:
        if os.environ.get("CI"):
            pytest.fail("STREAMBUS_GATEWAY must name the gateway under test in CI")
        pytest.skip("set STREAMBUS_GATEWAY=host:port to run the gRPC contract tests")
    return addr.removeprefix("http://")


@pytest.fixture(scope="session")
def channel(gateway_addr, pb):
    """A channel to a gateway that answers ListTopics (waits up to 30 s)."""
    ch = grpc.insecure_channel(gateway_addr)
    admin = pb.admin_grpc.AdminServiceStub(ch)
    deadline = time.monotonic() + 30
    while True:
        try:
            admin.ListTopics(pb.admin.ListTopicsRequest(), timeout=5)
            break
        except grpc.RpcError as e:
            if time.monotonic() > deadline:
                pytest.fail(f"gateway {gateway_addr} not ready: {e.code()} {e.details()}")
            time.sleep(0.5)
    yield ch
    ch.close()


@pytest.fixture
def stubs(channel, pb):
    class Stubs:
        admin = pb.admin_grpc.AdminServiceStub(channel)
        produce = pb.produce_grpc.ProduceServiceStub(channel)
        consume = pb.consume_grpc.ConsumeServiceStub(channel)
        group = pb.group_grpc.GroupServiceStub(channel)

    return Stubs
