"""Generated gRPC stubs for the onnxrec.v1 API (scripts/gen_proto.py)."""
