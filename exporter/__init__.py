"""Export stage: trained runs -> ONNX graphs with verified parity -> a versioned model repository."""
