"""Inference: the decoding loop (PyTorch and ONNX Runtime), export to ONNX, and the TensorRT engine."""
