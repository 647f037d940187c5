"""TLS, authentication and ACLs from a non-Rust client: a `streambus dev`
of its own on TLS, with client certificates (mTLS) and bearer tokens
accepted at the gateway and ACLs enforced, and the Python gRPC client
connecting with a token (a superuser) or a certificate (`User:py`, allowed
only what its ACLs say), or refused without credentials.

The binary comes from `STREAMBUS_BIN` (`cargo xtask python-test` and
`cargo xtask ci` set it).
"""

import os
import subprocess
import time
import uuid
from pathlib import Path

import grpc
import pytest

TOKEN = "python-token-" + uuid.uuid4().hex


def reason(err: grpc.RpcError) -> str:
    md = dict(err.trailing_metadata() or ())
    return md.get("streambus-reason")


@pytest.fixture(scope="module")
def secure_dev(tmp_path_factory):
    """A TLS `streambus dev`: (gateway address, certificate directory)."""
    binary = os.environ.get("STREAMBUS_BIN")
    if not binary:
        if os.environ.get("CI"):
            pytest.fail("STREAMBUS_BIN must name the streambus binary in CI")
        pytest.skip("set STREAMBUS_BIN=target/debug/streambus to run the TLS tests")
    work = tmp_path_factory.mktemp("secure-dev")
    certs = work / "certs"
    subprocess.run(
        [binary, "tls", "generate", "--out", str(certs), "--clients", "py"],
        check=True,
        capture_output=True,
    )
    tokens = work / "tokens"
    tokens.write_text(f"# name token\npython {TOKEN}\n")
    settings = {
        "gateway.listen_addr": "127.0.0.1:0",
        "controller.listen_addr": "127.0.0.1:0",
        "storage_node.listen_addr": "127.0.0.1:0",
        "http.listen_addr": "127.0.0.1:0",
        "log.level": "warn",
        "tls.cert_file": certs / "node.pem",
        "tls.key_file": certs / "node-key.pem",
        "tls.ca_file": certs / "ca.pem",
        "tls.client_auth": "optional",
        "tls.client_ca_file": certs / "client-ca.pem",
        "gateway.auth.mtls": "true",
        "gateway.auth.token_file": tokens,
        "gateway.auth.acls": "true",
        "gateway.auth.superusers": "User:python",
    }
    args = [binary, "dev", "--data-dir", str(work / "data")]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    gateway = None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if line.strip().startswith("gateway (public gRPC)"):
            gateway = line.split()[-1]
            break
        if time.monotonic() > deadline:
            break
    if gateway is None:
        proc.kill()
        pytest.fail("the TLS streambus dev did not become ready")
    yield gateway, certs
    proc.terminate()
    proc.wait(timeout=30)


def secure_channel(gateway, certs, identity=None):
    creds = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.pem").read_bytes(),
        private_key=(certs / f"client-{identity}-key.pem").read_bytes() if identity else None,
        certificate_chain=(certs / f"client-{identity}.pem").read_bytes() if identity else None,
    )
    return grpc.secure_channel(gateway, creds)


def bearer(token):
    return (("authorization", f"Bearer {token}"),)


def test_a_token_over_tls_creates_a_topic_and_produces(secure_dev, pb):
    gateway, certs = secure_dev
    with secure_channel(gateway, certs) as ch:
        admin = pb.admin_grpc.AdminServiceStub(ch)
        produce = pb.produce_grpc.ProduceServiceStub(ch)
        name = f"secure-{uuid.uuid4().hex[:8]}"
        admin.CreateTopic(
            pb.admin.CreateTopicRequest(name=name, partitions=1, replication_factor=1),
            timeout=30,
            metadata=bearer(TOKEN),
        )
        deadline = time.monotonic() + 30
        while True:
            resp = produce.Produce(
                pb.produce.ProduceRequest(
                    batches=[
                        pb.produce.ProduceBatch(
                            topic=name, records=[pb.common.Record(value=b"over tls")]
                        )
                    ],
                    acks=pb.common.ACKS_ALL,
                ),
                timeout=30,
                metadata=bearer(TOKEN),
            )
            result = resp.results[0]
            if not result.HasField("error"):
                break
            assert time.monotonic() < deadline, result.error
            time.sleep(0.2)
        assert [a.base_offset for a in result.acks] == [0]
        topics = admin.ListTopics(
            pb.admin.ListTopicsRequest(), timeout=10, metadata=bearer(TOKEN)
        )
        assert name in [t.name for t in topics.topics]


def test_a_client_certificate_authenticates_without_a_token(secure_dev, pb):
    gateway, certs = secure_dev
    with secure_channel(gateway, certs, identity="py") as ch:
        admin = pb.admin_grpc.AdminServiceStub(ch)
        admin.ListTopics(pb.admin.ListTopicsRequest(), timeout=10)


def test_acls_refuse_what_they_do_not_allow(secure_dev, pb):
    gateway, certs = secure_dev
    name = f"guarded-{uuid.uuid4().hex[:8]}"
    with secure_channel(gateway, certs) as ch:
        admin = pb.admin_grpc.AdminServiceStub(ch)
        admin.CreateTopic(
            pb.admin.CreateTopicRequest(name=name, partitions=1, replication_factor=1),
            timeout=30,
            metadata=bearer(TOKEN),
        )
    with secure_channel(gateway, certs, identity="py") as ch:
        admin = pb.admin_grpc.AdminServiceStub(ch)
        produce = pb.produce_grpc.ProduceServiceStub(ch)
        # No ACL names User:py: it sees no topic, and is refused the rest.
        topics = admin.ListTopics(pb.admin.ListTopicsRequest(), timeout=10)
        assert name not in [t.name for t in topics.topics]
        for call, request in [
            (admin.DescribeTopic, pb.admin.DescribeTopicRequest(name=name)),
            (admin.DeleteTopic, pb.admin.DeleteTopicRequest(name=name)),
            (admin.DescribeAcls, pb.admin.DescribeAclsRequest()),
        ]:
            with pytest.raises(grpc.RpcError) as info:
                call(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert reason(info.value) == "PERMISSION_DENIED"
            assert "User:py may not" in info.value.details()
        result = produce.Produce(
            pb.produce.ProduceRequest(
                batches=[
                    pb.produce.ProduceBatch(topic=name, records=[pb.common.Record(value=b"x")])
                ],
                acks=pb.common.ACKS_ALL,
            ),
            timeout=30,
        ).results[0]
        assert result.error.reason == "PERMISSION_DENIED", result
        assert f'User:py may not write topic "{name}"' in result.error.message

        # The superuser lets User:py write this topic, and only that.
        with secure_channel(gateway, certs) as su:
            pb_admin = pb.admin_grpc.AdminServiceStub(su)
            created = pb_admin.CreateAcls(
                pb.admin.CreateAclsRequest(
                    acls=[
                        pb.admin.AclBinding(
                            principal="User:py",
                            resource_type=pb.admin.ACL_RESOURCE_TYPE_TOPIC,
                            pattern_type=pb.admin.ACL_PATTERN_TYPE_LITERAL,
                            resource_name=name,
                            operation=pb.admin.ACL_OPERATION_WRITE,
                            permission=pb.admin.ACL_PERMISSION_ALLOW,
                        )
                    ]
                ),
                timeout=30,
                metadata=bearer(TOKEN),
            )
            assert created.created == 1
        result = produce.Produce(
            pb.produce.ProduceRequest(
                batches=[
                    pb.produce.ProduceBatch(topic=name, records=[pb.common.Record(value=b"x")])
                ],
                acks=pb.common.ACKS_ALL,
            ),
            timeout=30,
        ).results[0]
        assert not result.HasField("error"), result.error
        # Write implies describe, not delete.
        topics = admin.ListTopics(pb.admin.ListTopicsRequest(), timeout=10)
        assert [t.name for t in topics.topics] == [name]
        with pytest.raises(grpc.RpcError) as info:
            admin.DeleteTopic(pb.admin.DeleteTopicRequest(name=name), timeout=10)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_calls_without_valid_credentials_are_refused(secure_dev, pb):
    gateway, certs = secure_dev
    with secure_channel(gateway, certs) as ch:
        admin = pb.admin_grpc.AdminServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            admin.ListTopics(pb.admin.ListTopicsRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason(info.value) == "UNAUTHENTICATED"
        assert "bearer token" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            admin.ListTopics(
                pb.admin.ListTopicsRequest(), timeout=10, metadata=bearer("not-" + TOKEN)
            )
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "not valid" in info.value.details()
    # Plaintext never gets a gRPC answer from a TLS listener.
    with grpc.insecure_channel(gateway) as ch:
        admin = pb.admin_grpc.AdminServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            admin.ListTopics(pb.admin.ListTopicsRequest(), timeout=5, metadata=bearer(TOKEN))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
