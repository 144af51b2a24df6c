"""SASRec: shapes, scoring, a decreasing loss, and beating popularity on a log with order signal."""
import numpy as np
import torch

from REC.data import EvalBatches, build_train_batches, leave_one_out, load_interactions
from REC.evaluator import FullRankingEvaluator
from REC.model import create_model, get_model_class, list_models
from REC.model.base import DatasetInfo, RecModel
from REC.run import build_config

from .conftest import SMALL_MODEL, result_of, run_main, sasrec_args


def small_sasrec(seq_data, *overrides):
    cfg = build_config(["IDNet/sasrec.yaml", "overall/ID.yaml"],
                       [f"--data_path={seq_data}", "--dataset=Seq", *SMALL_MODEL, *overrides])
    split = leave_one_out(load_interactions(str(seq_data), "Seq"))
    torch.manual_seed(0)
    return cfg, split, create_model("SASRec", cfg, DatasetInfo(split.item_num, split.user_num))


def test_registry_finds_sasrec():
    assert "SASRec" in list_models("*sas*") and get_model_class("SASRec").family == "IDNet"


def test_shapes_and_scoring_all_items_equals_item_by_item(seq_data):
    cfg, split, model = small_sasrec(seq_data)
    model.eval()
    batch = next(iter(EvalBatches(split.test, 10, 16)))
    users = model.user_representations(batch)
    items = model.item_representations()
    assert users.shape == (16, 32) and items.shape == (split.item_num, 32)
    scores = model.score(users, items)
    assert scores.shape == (16, split.item_num)
    one_by_one = torch.stack([(users * items[i]).sum(-1) for i in range(split.item_num)], 1)
    torch.testing.assert_close(scores, one_by_one, rtol=1e-5, atol=1e-5)
    # the last-position shortcut used for scoring equals the full encoder's last position
    full = model.encode(batch["item_seq"])[:, -1]
    torch.testing.assert_close(users, full, rtol=1e-5, atol=1e-5)


def test_loss_decreases(seq_data):
    cfg, split, model = small_sasrec(seq_data)
    batch = build_train_batches("SEQ", split, cfg)[0]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = model(batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert loss.dim() == 0 and losses[-1] < 0.5 * losses[0]


class Popularity(RecModel):
    """Rank by training popularity: the floor any learned model must clear."""

    def __init__(self, counts):
        super().__init__(None, DatasetInfo(len(counts), 0))
        self.counts = torch.as_tensor(counts, dtype=torch.float32)

    def item_representations(self):
        return self.counts[:, None]

    def user_representations(self, batch):
        return torch.ones(len(batch["user_id"]), 1)


def test_sasrec_beats_popularity(seq_data, tmp_path):
    proc = run_main(sasrec_args(seq_data, tmp_path, "--epochs=12", "--optim_args.learning_rate=3e-3",
                                "--optim_args.weight_decay=0"))
    sasrec = result_of(proc)["test"]
    split = leave_one_out(load_interactions(str(seq_data), "Seq"))
    counts = np.bincount(split.train_items, minlength=split.item_num)
    evaluator = FullRankingEvaluator(["Recall", "NDCG"], [5, 10], 7, torch.device("cpu"))
    pop = evaluator.evaluate(Popularity(counts), EvalBatches(split.test, 10, 128))
    assert sasrec["recall@10"] > pop["recall@10"] + 0.1
    assert sasrec["ndcg@10"] > pop["ndcg@10"] + 0.1
