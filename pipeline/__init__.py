"""facemask-mlops: face segmentation from face boxes, with DVC stages and MLflow tracking."""
