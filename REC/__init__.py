"""PixelRec: recommender-system benchmarks on raw image pixels (IDNet, PixelNet, ViNet)."""
__version__ = "0.1.0"
