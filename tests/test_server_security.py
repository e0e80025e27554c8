"""TLS, mutual TLS and bearer tokens: the server refuses what it should, and health stays open."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from onnxrec.exporter.export import ExportOptions, export
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import Dataset, save_dataset
from onnxrec.trainer.train import train
from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.certs import make_certs
from tests.serverproc import ServerProcess, start_server, wait_health


@pytest.fixture(scope="module")
def repo(synthetic: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sec")
    data = save_dataset(synthetic, root / "data")
    run = train(TrainConfig(data=str(data), out=str(root / "run"), model="mf", epochs=1, progress=False, dim=8))
    export(run, root / "repo", "mf", options=ExportOptions(k_max=20, max_batch=8))
    return root / "repo"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tests/certs.py's certificates (none has an extended key usage), and from the same CA
    ``client-eku`` (clientAuth) and ``server-eku`` (serverAuth only, as real server certificates are)."""
    root = tmp_path_factory.mktemp("certs")
    found = make_certs(root)
    for name, usage in (("client-eku", "clientAuth"), ("server-eku", "serverAuth")):
        (root / f"{name}.cnf").write_text(f"extendedKeyUsage={usage}\nsubjectAltName=IP:127.0.0.1\n")
        request = f"req -newkey rsa:2048 -nodes -subj /CN={name} -keyout {name}.key -out {name}.csr"
        sign = f"x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out {name}.pem"
        for args in (request.split(), [*sign.split(), "-extfile", f"{name}.cnf"]):
            subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True, timeout=60)
        found[name], found[f"{name}.key"] = root / f"{name}.pem", root / f"{name}.key"
    return found


def _client_creds(certs: dict[str, Path], name: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        certs["ca"].read_bytes(), certs[f"{name}.key"].read_bytes(), certs[name].read_bytes()
    )


def _mtls_server(repo: Path, certs: dict[str, Path], log: Path, *args: str) -> ServerProcess:
    srv = start_server(
        repo,
        log,
        "--tls-cert",
        str(certs["server"]),
        "--tls-key",
        str(certs["server.key"]),
        "--tls-client-ca",
        str(certs["ca"]),
        *args,
        wait_serving=False,
    )
    wait_health(srv.address, health_pb2.HealthCheckResponse.SERVING, 60, _client_creds(certs, "client-eku"))
    return srv


LIST = pb.ListModelsRequest()


def test_token_auth(repo: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alpha-token\nbeta-token\n")
    srv = start_server(repo, tmp_path / "log", "--auth-tokens-file", str(tokens))
    try:
        with grpc.insecure_channel(srv.address) as ch:
            stub = pb_grpc.RecommenderServiceStub(ch)
            for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "alpha-token"),)):
                with pytest.raises(grpc.RpcError) as err:
                    stub.ListModels(LIST, metadata=metadata, timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
            assert stub.ListModels(LIST, metadata=(("authorization", "Bearer beta-token"),), timeout=10).models
            # health is open without a token
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
    finally:
        srv.stop()


def test_tls_and_mutual_tls(repo: Path, certs: dict[str, Path], tmp_path: Path) -> None:
    srv = _mtls_server(repo, certs, tmp_path / "log")
    try:
        ca = certs["ca"].read_bytes()
        good = _client_creds(certs, "client-eku")
        with grpc.secure_channel(srv.address, good) as ch:
            assert pb_grpc.RecommenderServiceStub(ch).ListModels(LIST, timeout=10).models
        refused = [
            grpc.ssl_channel_credentials(ca),  # no client certificate
            grpc.ssl_channel_credentials(
                ca, certs["other-client.key"].read_bytes(), certs["other-client"].read_bytes()
            ),  # signed by another CA
            grpc.ssl_channel_credentials(
                certs["other-ca"].read_bytes(), certs["client.key"].read_bytes(), certs["client"].read_bytes()
            ),  # does not trust the server
        ]
        for creds in refused:
            with grpc.secure_channel(srv.address, creds) as ch, pytest.raises(grpc.RpcError) as err:
                pb_grpc.RecommenderServiceStub(ch).ListModels(LIST, timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        with grpc.insecure_channel(srv.address) as ch, pytest.raises(grpc.RpcError):
            pb_grpc.RecommenderServiceStub(ch).ListModels(LIST, timeout=5)  # plaintext to a TLS port
    finally:
        srv.stop()


def test_bad_server_config_is_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxrec",
            "serve",
            "--repository",
            str(tmp_path),
            "--tls-cert",
            str(tmp_path / "none.pem"),
            "--tls-key",
            str(tmp_path / "none.key"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "none.pem: no such file" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run(
        [sys.executable, "-m", "onnxrec", "serve", "--port", "eighty"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "'port'" in p.stderr


def test_device_cuda_without_cuda_fails_clearly(tmp_path: Path) -> None:
    """No silent CPU fallback: on a machine without a usable GPU, --device cuda refuses to start."""
    import subprocess
    import sys

    from onnxrec.server.loaded_model import cuda_status

    if cuda_status()[0]:
        pytest.skip("this machine has a working CUDA execution provider")
    p = subprocess.run(
        [sys.executable, "-m", "onnxrec", "serve", "--repository", str(tmp_path), "--device", "cuda", "--port", "0"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2, p.stderr
    assert "--device cuda: CUDA is not usable" in p.stderr and "Traceback" not in p.stderr
    assert len([ln for ln in p.stderr.splitlines() if ln.strip()]) == 1, p.stderr


def test_python_client_tls_and_token(repo: Path, certs: dict[str, Path], tmp_path: Path) -> None:
    """The client's TLS, mutual TLS and token options against a server that requires all three."""
    from onnxrec.clients import RecommenderClient, RecommenderError

    tokens = tmp_path / "tokens"
    tokens.write_text("t0k3n\n")
    srv = start_server(
        repo,
        tmp_path / "log",
        "--tls-cert",
        str(certs["server"]),
        "--tls-key",
        str(certs["server.key"]),
        "--tls-client-ca",
        str(certs["ca"]),
        "--auth-tokens-file",
        str(tokens),
        wait_serving=False,
    )
    try:
        tls = {"ca_cert": certs["ca"], "client_cert": certs["client-eku"], "client_key": certs["client-eku.key"]}
        with RecommenderClient(srv.address, token="t0k3n", **tls) as client:
            deadline = time.monotonic() + 60
            while client.health() != "SERVING" and time.monotonic() < deadline:
                time.sleep(0.2)
            assert [m.name for m in client.list_models()] == ["mf"]
        with RecommenderClient(srv.address, token="wrong", **tls) as client, pytest.raises(RecommenderError) as err:
            client.list_models()
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
        with (
            RecommenderClient(srv.address, token="t0k3n", ca_cert=certs["ca"], retries=0) as client,
            pytest.raises(RecommenderError) as err,
        ):
            client.list_models()  # no client certificate: the TLS handshake fails
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop()


def _code(address: str, creds: grpc.ChannelCredentials) -> grpc.StatusCode:
    with grpc.secure_channel(address, creds) as ch:
        try:
            pb_grpc.RecommenderServiceStub(ch).ListModels(LIST, timeout=10)
        except grpc.RpcError as err:
            return err.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


def test_client_certificates_need_client_auth_usage(repo: Path, certs: dict[str, Path], tmp_path: Path) -> None:
    """Issue #14.12: the CA's signature alone is not enough. A client certificate must list clientAuth:
    the server's own certificate and a client one without extended key usage are UNAUTHENTICATED (a
    serverAuth-only one fails the TLS handshake itself, UNAVAILABLE). ``--no-tls-client-eku`` lets a
    certificate without the extension in."""
    srv = _mtls_server(repo, certs, tmp_path / "log")
    try:
        assert _code(srv.address, _client_creds(certs, "client-eku")) == grpc.StatusCode.OK
        for name in ("server", "client"):
            assert _code(srv.address, _client_creds(certs, name)) == grpc.StatusCode.UNAUTHENTICATED, name
        assert _code(srv.address, _client_creds(certs, "server-eku")) == grpc.StatusCode.UNAVAILABLE
        with grpc.secure_channel(srv.address, _client_creds(certs, "server")) as ch, pytest.raises(grpc.RpcError) as e:
            pb_grpc.RecommenderServiceStub(ch).ListModels(LIST, timeout=10)
        assert "has no extended key usage; it must list clientAuth" in e.value.details()  # type: ignore[attr-defined]
        with grpc.secure_channel(srv.address, _client_creds(certs, "server")) as ch, pytest.raises(grpc.RpcError) as e:
            next(health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=10))  # a stream
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        with grpc.secure_channel(srv.address, _client_creds(certs, "client-eku")) as ch:
            watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=10)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
            ask = reflection_pb2.ServerReflectionRequest(list_services="")
            answer = next(reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(iter([ask]), timeout=10))
            assert "onnxrec.v1.RecommenderService" in {s.name for s in answer.list_services_response.service}
    finally:
        srv.stop()
    srv = _mtls_server(repo, certs, tmp_path / "log2", "--no-tls-client-eku")
    try:
        assert _code(srv.address, _client_creds(certs, "client")) == grpc.StatusCode.OK
        assert _code(srv.address, _client_creds(certs, "server-eku")) == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop()
