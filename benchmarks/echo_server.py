"""The floor for serving benchmarks: a grpc.aio server that answers every Recommend with a canned response.

It registers the same method (``/onnxrec.v1.RecommenderService/Recommend``) with the same message
types (RecommendRequest -> RecommendResponse) as ``onnxrec serve``, so ``onnxrec bench`` drives it
unchanged. Each request is parsed and a pre-built RecommendResponse of ``--items`` items (default 10,
the size of a K=10 answer) is serialized back; no model runs. Whatever the real server does beyond
this is its own cost.

    python benchmarks/echo_server.py --port 0          # prints "echo serving on 127.0.0.1:PORT (pid N)"
    python benchmarks/echo_server.py --response r.bin  # answer with a serialized RecommendResponse
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

import grpc

from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc


def canned_response(items: int = 10, model: str = "ml100k") -> pb.RecommendResponse:
    """A RecommendResponse shaped like a K=``items`` answer of an ML-100K model (ids of 3-4 digits)."""
    return pb.RecommendResponse(
        items=[pb.ScoredItem(item_id=str(1000 + 37 * i % 682), score=12.5 - 0.37 * i) for i in range(items)],
        model_name=model,
        model_version=1,
        source=pb.SOURCE_MODEL,
    )


class EchoServicer(pb_grpc.RecommenderServiceServicer):
    """Recommend answers the canned response; every other method stays UNIMPLEMENTED."""

    def __init__(self, response: pb.RecommendResponse) -> None:
        self._response = response

    async def Recommend(self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext) -> pb.RecommendResponse:
        """The canned response, whatever was asked."""
        return self._response


async def serve(host: str, port: int, response: pb.RecommendResponse) -> None:
    """Serve until SIGTERM or SIGINT."""
    server = grpc.aio.server()
    pb_grpc.add_RecommenderServiceServicer_to_server(EchoServicer(response), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"echo serving on {host}:{bound} (pid {os.getpid()})", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    """Parse the options and serve."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = a free port")
    ap.add_argument("--items", type=int, default=10, help="items in the canned response")
    ap.add_argument("--model", default="ml100k", help="model_name in the canned response")
    ap.add_argument("--response", type=Path, help="a serialized RecommendResponse to answer instead")
    args = ap.parse_args()
    if args.response:
        response = pb.RecommendResponse.FromString(args.response.read_bytes())
    else:
        response = canned_response(args.items, args.model)
    asyncio.run(serve(args.host, args.port, response))


if __name__ == "__main__":
    main()
