"""Each metric on hand-made rankings with exact expected values, and the evaluator's masking."""
import math

import numpy as np
import pytest
import torch

from REC.data import EvalBatches, EvalSplit
from REC.evaluator import FullRankingEvaluator, get_metric
from REC.model.base import DatasetInfo, RecModel

# rows: hit at rank 1; hit at rank 3; no hit; two positives at ranks 2 and 4
HITS = torch.tensor([[1, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 1, 0, 1, 0]], dtype=torch.bool)
N_POS = torch.tensor([1, 1, 1, 2])
L2 = math.log2


@pytest.mark.parametrize("name,k,expected", [
    ("Hit", 1, [1, 0, 0, 0]),
    ("Hit", 5, [1, 1, 0, 1]),
    ("Recall", 2, [1, 0, 0, 0.5]),
    ("Recall", 5, [1, 1, 0, 1]),
    ("Precision", 5, [0.2, 0.2, 0, 0.4]),
    ("MRR", 2, [1, 0, 0, 0.5]),
    ("MRR", 5, [1, 1 / 3, 0, 0.5]),
    ("NDCG", 2, [1, 0, 0, (1 / L2(3)) / (1 + 1 / L2(3))]),
    ("NDCG", 5, [1, 1 / L2(4), 0, (1 / L2(3) + 1 / L2(5)) / (1 + 1 / L2(3))]),
    ("MAP", 5, [1, 1 / 3, 0, (1 / 2 + 2 / 4) / 2]),
])
def test_metric_values(name, k, expected):
    got = get_metric(name)(HITS, N_POS, k)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)


def test_unknown_metric_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown metric 'AUC'; known: \[.*'NDCG'"):
        get_metric("AUC")


class FixedScores(RecModel):
    """Scores come from a fixed [user_num, item_num] table: the test decides every ranking."""

    def __init__(self, table):
        super().__init__(None, DatasetInfo(table.shape[1], table.shape[0]))
        self.table = table

    def item_representations(self):
        return torch.eye(self.item_num)

    def user_representations(self, batch):
        return self.table[batch["user_id"]]


def split_of(users, targets, histories):
    indptr = np.cumsum([0] + [len(h) for h in histories])
    return EvalSplit.from_csr(np.array(users), np.array(targets), indptr, np.array(sum(histories, []), dtype=np.int64))


def test_padding_and_history_are_masked():
    # 8 items (0 = padding). Scores descend with the item id except where set.
    table = torch.arange(8, 0, -1, dtype=torch.float32).repeat(4, 1)
    table[:, 0] = 100.0                                  # padding scores highest: must be ignored
    split = split_of(users=[1, 2, 3], targets=[3, 2, 7],
                     histories=[[1, 2], [2, 5], [1]])    # user 2's target repeats a history item
    evaluator = FullRankingEvaluator(["Recall", "NDCG"], [1, 5], 7, torch.device("cpu"))
    result = evaluator.evaluate(FixedScores(table), EvalBatches(split, max_len=3, batch_size=2)).metrics
    # user 1: items 1,2 masked -> item 3 ranks first. user 2: target masked, never hit.
    # user 3: item 1 masked -> order 2,3,4,5,6,7 -> item 7 ranked 6th, outside top 5.
    assert result == {"recall@1": round(1 / 3, 7), "recall@5": round(1 / 3, 7),
                      "ndcg@1": round(1 / 3, 7), "ndcg@5": round(1 / 3, 7)}


def test_batch_size_does_not_change_the_result():
    rng = torch.Generator().manual_seed(0)
    table = torch.randn(40, 30, generator=rng)
    gen = np.random.default_rng(0)
    histories = [list(gen.choice(np.arange(1, 30), size=gen.integers(1, 6), replace=False)) for _ in range(39)]
    split = split_of(list(range(1, 40)), list(gen.integers(1, 30, size=39)), histories)
    evaluator = FullRankingEvaluator(["Recall", "NDCG", "MRR", "Hit"], [5, 10], 7, torch.device("cpu"))
    results = [evaluator.evaluate(FixedScores(table), EvalBatches(split, 3, b)) for b in (1, 7, 64)]
    assert results[0] == results[1] == results[2]


def test_one_score_matrix_is_alive_at_a_time():
    """A batch's [B, items] scores are released before the next batch is scored (at 400K items and 1,024 users a
    matrix is 1.6 GB; two alive would double the evaluation's peak)."""
    import weakref

    class Watched(FixedScores):
        def __init__(self, table):
            super().__init__(table)
            self.previous, self.alive_at_next = None, []

        def score(self, users, items):
            self.alive_at_next.append(self.previous is not None and self.previous() is not None)
            out = super().score(users, items)
            self.previous = weakref.ref(out)
            return out

    table = torch.randn(40, 30, generator=torch.Generator().manual_seed(1))
    split = split_of(list(range(1, 40)), [1] * 39, [[2]] * 39)
    model = Watched(table)
    FullRankingEvaluator(["Recall"], [5], 7, torch.device("cpu")).evaluate(model, EvalBatches(split, 3, 4))
    assert len(model.alive_at_next) == 10 and not any(model.alive_at_next)


def test_an_evaluation_memory_budget_cuts_the_users_per_batch(caplog):
    """eval_memory_mib bounds one batch's [users, items] float32 scores; never more users than eval_batch_size,
    never fewer than one; the log says what a batch takes (the metrics do not depend on it: the test above)."""
    from REC.app.configure import build_config
    from REC.app.train import eval_users_per_batch

    from .conftest import ROOT
    files = [ROOT / "IDNet" / "sasrec.yaml", ROOT / "overall" / "ID.yaml"]
    assert eval_users_per_batch(build_config(files), 400_001) == 1024
    with caplog.at_level("INFO"):
        assert eval_users_per_batch(build_config(files, ["--eval_memory_mib=100"]), 400_001) == 65
    assert "65 users per batch x 400001 items = 99 MiB of scores per batch (eval_memory_mib 100)" in caplog.text
    assert eval_users_per_batch(build_config(files, ["--eval_memory_mib=100"]), 1_000) == 1024
    assert eval_users_per_batch(build_config(files, ["--eval_memory_mib=1"]), 10_000_000) == 1
