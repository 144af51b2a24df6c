"""Per-model test settings: small sizes for speed, and the training settings of the beats-Pop run.

A model registered without an entry here fails test_models.py::test_every_model_has_a_test_case, so a new model
is tested the day it is registered.
"""
SMALL = {
    "Pop": [],
    "SASRec": ["--embedding_size=32", "--n_heads=2", "--n_layers=1"],
    "MF": ["--embedding_size=64"],  # xavier init of a 301-row table is small: 32 learns too slowly for the loss test
    "FM": ["--embedding_size=32"],
    "DSSM": ["--embedding_size=64"],  # the mean of the history learns slower than a sum: 32 misses the loss test
    "LightGCN": ["--embedding_size=256", "--n_layers=2"],  # layer averaging slows the start; 256 is its default d
    "BERT4Rec": ["--embedding_size=32", "--n_heads=2", "--n_layers=1"],
    "LightSANs": ["--embedding_size=32", "--n_heads=2", "--n_layers=1"],
    "GRU4Rec": ["--embedding_size=32"],
    "NextItNet": ["--embedding_size=32", "--block_num=1"],
    "SRGNN": ["--embedding_size=32", "--step=1"],
    # ViNet (tests/test_vinet.py adds the feature file and its width)
    "VisRank": [],
    "VBPR": ["--embedding_size=32"],
    "ACF": ["--embedding_size=32"],
    "FSASRec": ["--embedding_size=32", "--n_heads=2", "--n_layers=1"],
    # PixelNet (tests/test_pixelnet.py): the ID model's small settings, a tiny encoder on tiny covers
    "MOSASRec": ["--embedding_size=32", "--n_heads=2", "--n_layers=1"],
    "MOBERT4Rec": ["--embedding_size=32", "--n_heads=2", "--n_layers=1"],
    "MOLightSANs": ["--embedding_size=32", "--n_heads=2", "--n_layers=1"],
    "MOGRU4Rec": ["--embedding_size=32"],
    "MONextItNet": ["--embedding_size=32", "--block_num=1"],
    "MOSRGNN": ["--embedding_size=32", "--step=1"],
    "MOMF": ["--embedding_size=32"],
    "MOFM": ["--embedding_size=32"],
    "MODSSM": ["--embedding_size=32"],
    "DVBPR": ["--embedding_size=32", "--dropout_prob=0.0", "--image_size=224"],
}

# extra overrides for the short training run that must beat Pop on the synthetic log
BEAT_POP = {
    "SASRec": ["--epochs=12", "--optim_args={learning_rate: 3.0e-3, weight_decay: 0}"],
    "GRU4Rec": ["--epochs=12", "--optim_args={learning_rate: 3.0e-3, weight_decay: 0}"],
    "NextItNet": ["--epochs=12", "--optim_args={learning_rate: 3.0e-3, weight_decay: 0}"],
    # cloze training learns order more slowly (the mask token must learn to attend to its neighbours)
    "BERT4Rec": ["--epochs=24", "--train_batch_size=16", "--optim_args={learning_rate: 3.0e-3, weight_decay: 0}"],
    "FM": ["--epochs=4", "--optim_args={learning_rate: 3.0e-3, weight_decay: 0}"],
    "DSSM": ["--epochs=4", "--optim_args={learning_rate: 3.0e-3, weight_decay: 0}"],
    "LightSANs": ["--epochs=3", "--optim_args={learning_rate: 3.0e-3, weight_decay: 0}"],
    "SRGNN": ["--epochs=5", "--optim_args={learning_rate: 3.0e-3, weight_decay: 0}"],
    "MF": ["--epochs=8", "--optim_args={learning_rate: 1.0e-2, weight_decay: 0}"],
    "LightGCN": ["--epochs=5", "--optim_args={learning_rate: 1.0e-2, weight_decay: 0}"],
}
