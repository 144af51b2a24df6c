"""Frozen image features of every item for the ViNet models: ``python -m REC.features`` (``__main__.py``) on top
of the library in ``extract.py``. The models read the finished file through ``REC.model.ViNet.feature_table``.
"""
from .extract import (FEATURES_DIR, ExtractResult, FeatureExtractionError, FeatureExtractor, FeatureFile,
                      default_output, extract_features, feature_config)

__all__ = ["FEATURES_DIR", "ExtractResult", "FeatureExtractionError", "FeatureExtractor", "FeatureFile",
           "default_output", "extract_features", "feature_config"]
