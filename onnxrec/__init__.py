"""onnxrec: train, export and serve recommendation models (PyTorch -> ONNX -> gRPC)."""

__version__ = "0.1.0"
