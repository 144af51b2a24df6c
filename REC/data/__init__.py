"""CSV -> id maps -> split -> training batches and evaluation batches. Knows the config, not the models."""
from .eval_batches import EvalBatches, shard_bounds
from .interactions import DataError, Interactions, TokenTable, csv_path, load_interactions
from .node_shared import shared_split
from .protocols import apply_protocols
from .vocabulary import DataCheck, load_run_interactions, save_run_vocabulary
from .split import EvalSplit, Split, leave_one_out, sequence_chunks
from .training import TRAIN_DATASETS, EpochBatches, build_train_batches, register_train_dataset, sample_negatives


def prepare_split(config) -> tuple[Interactions, Split]:
    """Interactions (cached by CSV content) and their leave-one-out split for this config, with the config's
    protocols (cold items, few-shot training users; ``REC.data.protocols``) applied. Under several processes rank
    0 builds the split and the others on its node map it (``node_shared.shared_split``)."""
    inter = load_interactions(config["data_path"], config["dataset"], config["cache_dir"])
    return inter, _split(inter, config)


def prepare_run_split(config, run_dir) -> tuple[Interactions, Split, DataCheck]:
    """``prepare_split`` for an existing run: the CSV read through the run's own vocabulary (``vocabulary.py``),
    with how today's CSV compares with the one the run was trained on."""
    inter, check = load_run_interactions(config, run_dir)
    return inter, _split(inter, config), check


def _split(inter: Interactions, config) -> Split:
    return shared_split(config, lambda: apply_protocols(leave_one_out(inter), inter.item_tokens, config), inter)


__all__ = ["DataCheck", "DataError", "EvalBatches", "EvalSplit", "EpochBatches", "Interactions", "Split",
           "TokenTable", "TRAIN_DATASETS", "build_train_batches", "csv_path", "leave_one_out", "load_interactions",
           "prepare_run_split", "prepare_split", "register_train_dataset", "save_run_vocabulary", "sample_negatives",
           "sequence_chunks", "shard_bounds"]
