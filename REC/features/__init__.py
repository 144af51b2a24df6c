"""Moved to ``REC.app.extract``; the command is ``python -m REC features``. This package keeps earlier scripts
working (``from REC.features import extract_features``, ``python -m REC.features``); it stays a package, not an
alias of the module, so that ``python -m`` finds its ``__main__``."""
from ..app.extract import (FEATURES_DIR, ExtractResult, FeatureExtractionError, FeatureExtractor, FeatureFile,
                           default_output, extract_features, feature_config)

__all__ = ["FEATURES_DIR", "ExtractResult", "FeatureExtractionError", "FeatureExtractor", "FeatureFile",
           "default_output", "extract_features", "feature_config"]
