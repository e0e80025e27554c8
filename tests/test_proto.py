"""The gRPC API definition: generated stubs are current and the messages behave as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]


def test_generated_stubs_are_current() -> None:
    p = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_proto.py"), "--check"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr


def test_service_has_every_rpc() -> None:
    service = pb.DESCRIPTOR.services_by_name["RecommenderService"]
    assert [m.name for m in service.methods] == [
        "Recommend",
        "RecommendBatch",
        "Score",
        "SimilarItems",
        "ListModels",
        "GetModelMetadata",
        "TrackEvents",
        "ForgetUser",
    ]
    for m in service.methods:  # one request and one response message per RPC
        assert m.input_type.name == f"{m.name}Request"
        assert m.output_type.name == f"{m.name}Response"
    assert hasattr(pb_grpc, "RecommenderServiceStub") and hasattr(pb_grpc, "add_RecommenderServiceServicer_to_server")


def test_exclude_seen_defaults_to_true_by_presence() -> None:
    request = pb.RecommendRequest(model=pb.ModelRef(name="m"), user_id="42", k=10, history=["1", "2"])
    assert not request.HasField("exclude_seen")  # unset means the documented default, true
    request.exclude_seen = False
    again = pb.RecommendRequest.FromString(request.SerializeToString())
    assert again.HasField("exclude_seen") and again.exclude_seen is False
    assert list(again.history) == ["1", "2"] and again.model.version == 0
