"""Image item encoders for PixelNet and ViNet: a timm or open_clip backbone, a readout and a projection head.

``build_item_encoder(config, out_dim)`` builds the one named by ``config['encoder']``; ``list_encoders()`` lists
the registered names (``python -m REC.model.encoders`` prints them with their sizes). Importing this package
registers the encoders below; nothing is downloaded before an encoder with pretrained weights is built.
"""
from . import clip_encoders, timm_encoders  # noqa: F401  (their decorators fill the registry)
from .backbone import Backbone, BlockLayout, set_trainable_blocks
from .item_encoder import ItemEncoder, build_item_encoder
from .registry import EncoderSpec, UnknownEncoderError, get_encoder_spec, list_encoders, register_encoder

__all__ = ["Backbone", "BlockLayout", "EncoderSpec", "ItemEncoder", "UnknownEncoderError", "build_item_encoder",
           "get_encoder_spec", "list_encoders", "register_encoder", "set_trainable_blocks"]
