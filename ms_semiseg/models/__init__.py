from .builder import ModelBuilder, SegmentationInference, create_model

__all__ = ["ModelBuilder", "SegmentationInference", "create_model"]
