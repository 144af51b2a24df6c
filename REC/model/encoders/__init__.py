"""Image item encoders for PixelNet and ViNet: a timm or open_clip backbone, a readout and a projection head.

``build_item_encoder(config, out_dim)`` builds the one named by ``config['encoder']``; ``list_encoders()`` lists
the registered names (``python -m REC encoders`` prints them with their sizes). Importing this package
imports every module in it, so the encoders a module registers count by its being here, as models do
(``REC.model.registry``); nothing is downloaded before an encoder with pretrained weights is built.
"""
from ...utils.registry import import_submodules
from .backbone import Backbone, BlockLayout, set_trainable_blocks
from .item_encoder import ItemEncoder, build_item_encoder
from .registry import EncoderSpec, UnknownEncoderError, get_encoder_spec, list_encoders, register_encoder

import_submodules(__name__)  # after the names above: the modules import them from this package

__all__ = ["Backbone", "BlockLayout", "EncoderSpec", "ItemEncoder", "UnknownEncoderError", "build_item_encoder",
           "get_encoder_spec", "list_encoders", "register_encoder", "set_trainable_blocks"]
