"""The served model (MLflow pyfunc, ONNX), the registry, and the client."""
