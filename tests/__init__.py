"""The test suite (a regular package: tf2onnx installs a stray top-level `tests` namespace into site-packages)."""
