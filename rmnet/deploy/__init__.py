"""Deployment: ONNX and OpenVINO export, the embedding API, runtime profiling."""
