"""gRPC serving for onnxrec: per-model dynamic batching and the inference service."""
