"""Per-model test settings: small sizes for speed, and the training settings of the beats-Pop run.

A model registered without an entry here fails test_models.py::test_every_model_has_a_test_case, so a new model
is tested the day it is registered.
"""
SMALL = {
    "Pop": [],
    "SASRec": ["--embedding_size=32", "--n_heads=2", "--n_layers=1"],
    "MF": ["--embedding_size=32"],
    "FM": ["--embedding_size=32"],
    "DSSM": ["--embedding_size=32"],
    "LightGCN": ["--embedding_size=32", "--n_layers=2"],
    "BERT4Rec": ["--embedding_size=32", "--n_heads=2", "--n_layers=1"],
    "LightSANs": ["--embedding_size=32", "--n_heads=2", "--n_layers=1"],
    "GRU4Rec": ["--embedding_size=32"],
    "NextItNet": ["--embedding_size=32", "--block_num=1"],
    "SRGNN": ["--embedding_size=32", "--step=1"],
}

# extra overrides for the short training run that must beat Pop on the synthetic log
BEAT_POP = {
    "SASRec": ["--epochs=12", "--optim_args={learning_rate: 3.0e-3, weight_decay: 0}"],
}
