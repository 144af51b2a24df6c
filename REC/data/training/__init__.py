"""Training batches, one module per training-example type.

A model names its type by ``input_type``; the type's module is the snake_case of that name and its class the
CamelCase plus ``Batches`` (``NEXT_ITEM`` -> ``next_item.NextItemBatches``), which the registration enforces,
so a name read in one place finds the other two. Importing this package imports every module in it, so a new
module is registered by being here: no list to keep.
"""
from ...utils.registry import import_submodules
from .base import (TRAIN_DATASETS, EpochBatches, build_train_batches, check_negatives_possible, draw_items,
                   register_train_dataset, sample_negatives)

import_submodules(__name__)

__all__ = ["TRAIN_DATASETS", "EpochBatches", "build_train_batches", "check_negatives_possible", "draw_items",
           "register_train_dataset", "sample_negatives"]
