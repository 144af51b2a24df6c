"""Many-negative objectives (REC/model/objectives.py): values on hand-made tensors, the false-negative mask, the
log-probability correction, DDP equal to one process on the global batch, and which models take which loss."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from REC import distributed as dist
from REC.app.configure import build_config
from REC.model import create_model
from REC.model.base import DatasetInfo, TargetRows
from REC.model.objectives import FullSoftmax, SampledSoftmax

from .model_cases import SMALL

BASE = {"similarity": "dot", "temperature": 1.0, "learn_temperature": False, "seed": 0, "num_negatives": 0,
        "negative_sampling": "uniform"}


def rows(users, targets, table):
    table = torch.as_tensor(table, dtype=torch.float32)
    return TargetRows(torch.as_tensor(users, dtype=torch.float32), torch.as_tensor(targets), lambda ids: table[ids],
                      lambda: table)


TABLE = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]  # row 0 is padding
USERS = [[2.0, 0.0], [0.0, 1.0]]


def test_full_softmax_is_cross_entropy_over_every_item_but_padding():
    objective = FullSoftmax({**BASE, "temperature": 0.5}, np.ones(4), 4)
    loss = objective(rows(USERS, [1, 3], TABLE))
    # user 0 scores items 1..3 as 2, 0, 2; user 1 as 0, 1, 1; divided by 0.5
    expected = ((math.log(math.exp(4) + math.exp(0) + math.exp(4)) - 4)
                + (math.log(math.exp(0) + math.exp(2) + math.exp(2)) - 2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert objective.candidates_per_row == 3


def test_sampled_softmax_in_batch_with_correction_and_false_negative_mask():
    counts = np.array([0, 3, 1, 0])  # training popularity of items 1, 2, 3
    objective = SampledSoftmax(BASE, counts, 4)
    # three rows; rows 0 and 2 share target 1, so for each of them the other's column is masked
    users = [[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    loss = objective(rows(users, [1, 2, 1], TABLE))
    p = {1: 0.75, 2: 0.25}
    log_q = {i: math.log(3 * p[i]) for i in p}  # 3 in-batch rows drawn by popularity, no shared negatives
    s = lambda u, i: sum(a * b for a, b in zip(users[u], TABLE[i]))  # noqa: E731
    by_row = []
    for r, target in enumerate([1, 2, 1]):
        pos = s(r, target)  # the row's own target, present once: not corrected
        others = [s(r, c) - log_q[c] for c in [1, 2, 1] if c != target]  # equal to the target: masked
        by_row.append(math.log(math.exp(pos) + sum(math.exp(o) for o in others)) - pos)
    assert loss.item() == pytest.approx(sum(by_row) / 3, rel=1e-6)
    assert objective.candidates_per_row == pytest.approx(1 + 3 - (2 + 1 + 2) / 3)


class Epochs:
    """The least a training-batch dataset offers: an epoch, batches by index, its item keys."""
    item_keys = ("items",)

    def __init__(self, n: int = 3):
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __getitem__(self, b):
        return {"items": torch.tensor([[1, 2]])}


def test_shared_negatives_popularity_draw_and_its_correction():
    from REC.data.shared_negatives import SharedNegativeBatches
    counts = np.array([0, 90, 10, 0, 0])
    objective = SampledSoftmax({**BASE, "num_negatives": 2000, "negative_sampling": "popularity"}, counts, 5)
    batches = SharedNegativeBatches(Epochs(), objective.draw_distribution, 2000, 0, "shared")
    assert batches.item_keys == ("items", "shared")  # PixelNet fetches their covers too
    draws = batches[0]["shared"]
    share = torch.bincount(draws, minlength=5).float() / len(draws)
    assert share[0] == 0 and share[3] == 0 and share[4] == 0  # never padding, never an unseen item
    assert share[1].item() == pytest.approx(0.9, abs=0.03)
    again = SharedNegativeBatches(Epochs(), objective.draw_distribution, 2000, 0, "shared")
    assert torch.equal(again[0]["shared"], draws)  # seeded by (seed, epoch, batch): not by rank or history
    assert not torch.equal(batches[1]["shared"], draws)  # another batch, anew
    batches.set_epoch(1)
    assert not torch.equal(batches[0]["shared"], draws)  # another epoch, anew
    uniform = SampledSoftmax({**BASE, "num_negatives": 4000}, counts, 5)
    share = torch.bincount(SharedNegativeBatches(Epochs(), uniform.draw_distribution, 4000, 0, "s")[0]["s"],
                           minlength=5).float() / 4000
    assert share[0] == 0 and all(abs(share[i].item() - 0.25) < 0.03 for i in range(1, 5))
    # with one row of target 1 and K = 2 popularity draws, every column is corrected by log(1 * p + 2 * q)
    small = SampledSoftmax({**BASE, "num_negatives": 2, "negative_sampling": "popularity"}, counts, 5)
    table = torch.eye(5)[:, :4] * 0 + torch.arange(5.0)[:, None] * 0.1
    users = torch.ones(1, 4)
    negatives = torch.tensor([2, 1])
    loss = small(TargetRows(users, torch.tensor([1]), lambda ids: table[ids], lambda: table), negatives)
    expected_count = {1: 1 * 0.9 + 2 * 0.9, 2: 1 * 0.1 + 2 * 0.1}
    score = lambda i: 0.4 * i  # noqa: E731  (table row i is 0.1 * i in 4 dims)
    pos = score(1)  # the row's own target is not corrected; the shared draw equal to it is masked
    others = [score(int(n)) - math.log(expected_count[int(n)]) for n in negatives if int(n) != 1]
    assert loss.item() == pytest.approx(math.log(math.exp(pos) + sum(map(math.exp, others))) - pos, rel=1e-5)
    assert small.candidates_per_row == 2  # the target and item 2
    with pytest.raises(KeyError, match="the training batch has no 'shared_negatives'"):
        small(TargetRows(users, torch.tensor([1]), lambda ids: table[ids], lambda: table))


def test_held_out_items_are_never_candidates():
    """Under a cold-start protocol the held-out items get no training signal: never drawn, never in the full
    softmax's denominator."""
    from REC.data.shared_negatives import SharedNegativeBatches
    allowed = np.array([1, 2])  # item 3 held out
    full = FullSoftmax(BASE, np.ones(4), 4, allowed)
    loss = full(rows(USERS, [1, 2], TABLE))
    expected = ((math.log(math.exp(2) + math.exp(0)) - 2) + (math.log(math.exp(0) + math.exp(1)) - 1)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6) and full.candidates_per_row == 2
    for how in ("uniform", "popularity"):
        sampled = SampledSoftmax({**BASE, "num_negatives": 500, "negative_sampling": how}, np.array([0, 5, 5, 0]),
                                 4, allowed)
        draws = SharedNegativeBatches(Epochs(), sampled.draw_distribution, 500, 0, "s")[0]["s"]
        assert set(draws.tolist()) == {1, 2}, how


def test_cosine_similarity_and_a_learned_temperature():
    objective = FullSoftmax({**BASE, "similarity": "cosine", "temperature": 0.1, "learn_temperature": True},
                            np.ones(4), 4)
    assert [n for n, _ in objective.named_parameters()] == ["log_temperature"]
    loss = objective(rows([[5.0, 0.0]], [1], TABLE))
    c = [1.0, 0.0, 1 / math.sqrt(2)]  # cosines with items 1..3
    expected = math.log(sum(math.exp(x / 0.1) for x in c)) - c[0] / 0.1
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert objective.log_temperature.grad is not None and objective.log_temperature.grad.item() != 0


# ------------------------------------------------------------------------------------------------ the models
ID_FILES = {"SASRec": "sasrec", "BERT4Rec": "bert4rec", "GRU4Rec": "gru4rec", "NextItNet": "nextitnet", "MF": "mf",
            "FM": "fm", "DSSM": "dssm", "LightGCN": "lightgcn", "LightSANs": "lightsans", "SRGNN": "srgnn"}


def model_config(name: str, loss: str, *extra: str):
    return build_config([f"IDNet/{ID_FILES[name]}.yaml", "overall/ID.yaml"],
                        [*SMALL[name], f"--loss={loss}", "--num_negatives=16", *extra])


@pytest.fixture(scope="module")
def seq_split(seq_data):
    from REC.data import prepare_split
    config = build_config(["IDNet/sasrec.yaml", "overall/ID.yaml"], [f"--data_path={seq_data}", "--dataset=Seq"])
    return prepare_split(config)[1], seq_data


@pytest.mark.parametrize("name", sorted(ID_FILES))
@pytest.mark.parametrize("loss", ["softmax", "sampled_softmax"])
def test_every_id_model_trains_with_each_loss(name, loss, seq_split):
    from REC.app.train import training_batches
    split, data = seq_split
    config = model_config(name, loss, f"--data_path={data}", "--dataset=Seq", "--train_batch_size=32")
    torch.manual_seed(0)
    model = create_model(name, config, DatasetInfo.from_split(split))
    assert type(model.objective).__name__ == {"softmax": "FullSoftmax", "sampled_softmax": "SampledSoftmax"}[loss]
    batches = training_batches(model, split, config)
    batches.set_epoch(0)
    batch = next(iter(batches))
    rows_ = model.target_rows(batch)
    assert rows_.users.shape == (len(rows_.targets), rows_.users.shape[1]) and (rows_.targets > 0).all()
    model.eval()  # the item vectors a row is scored against are the rows the evaluation ranks
    with torch.no_grad():
        some = rows_.targets[:5]
        assert torch.allclose(rows_.item_vectors(some), model.item_representations()[some], atol=1e-5)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss_value = model(batch)
        assert torch.isfinite(loss_value)
        loss_value.backward()
        opt.step()
        losses.append(loss_value.item())
    assert losses[-1] < losses[0]


def test_models_that_cannot_take_a_loss_refuse_it_naming_both():
    with pytest.raises(ValueError, match=r"command line: key 'loss' = 'softmax': model Pop is not trained"):
        build_and_create("IDNet/pop.yaml", "overall/ID.yaml", "--loss=softmax")
    with pytest.raises(ValueError, match=r"key 'loss' = 'softmax': model MOSASRec encodes its items from covers, "
                                         r"and softmax would encode every cover at every step; use loss: "
                                         r"sampled_softmax"):
        build_and_create("PixelNet/sasrec.yaml", "overall/ViT.yaml", "--loss=softmax", "--encoder_pretrained=false")


def build_and_create(*args):
    files = [a for a in args if not a.startswith("--")]
    config = build_config(files, [a for a in args if a.startswith("--")])
    return create_model(config["model"], config, DatasetInfo(50, 20, shapes_only=True))


def test_the_paper_loss_is_the_models_own():
    """loss: paper attaches nothing: forward is the model's paper_loss, the weights and checkpoints unchanged."""
    config = build_config(["IDNet/sasrec.yaml", "overall/ID.yaml"], SMALL["SASRec"])
    model = create_model("SASRec", config, DatasetInfo(30, 10))
    assert model.objective is None and not any("objective" in k for k in model.state_dict())
    batch = {"items": torch.tensor([[0, 3, 4, 5]]), "negatives": torch.tensor([[0, 7, 8, 9]]),
             "target_mask": torch.tensor([[False, True, True, True]])}
    model.eval()  # no dropout: the two calls see the same network
    assert torch.equal(model(batch), model.paper_loss(batch))


# ------------------------------------------------------------------------------------------------ DDP
def _steps(rank: int, world: int, store: str, out: str, loss: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    config = build_config(["IDNet/sasrec.yaml", "overall/ID.yaml"],
                          [*SMALL["SASRec"], f"--loss={loss}", "--num_negatives=8", "--hidden_dropout_prob=0", "--temperature=0.07",
                           "--attn_dropout_prob=0"])
    torch.manual_seed(0)
    model = create_model("SASRec", config, DatasetInfo.from_pairs(40, 5, np.repeat(np.arange(1, 5), 10),
                                                                  np.arange(40) % 39 + 1))
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    # SGD: AdamW would divide the float noise of gradients that are zero in exact arithmetic (attention key
    # biases) by their tiny norms and turn it into full-size steps that differ between layouts
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    losses = []
    for step in range(3):
        items = torch.randint(1, 40, (8, 6), generator=g)
        items[:, :2] = torch.where(torch.arange(8)[:, None] % 3 == 0, 0, items[:, :2])  # ragged: some padding
        mask = items != 0
        batch = {"items": items, "negatives": torch.randint(1, 40, (8, 6), generator=g), "target_mask": mask}
        if world > 1:  # this rank's half of the global batch
            batch = {k: v[rank * 4:(rank + 1) * 4] for k, v in batch.items()}
        batch["shared_negatives"] = torch.randint(1, 40, (8,), generator=g)  # every rank draws the same
        opt.zero_grad()
        value = wrapped(batch)
        value.backward()
        opt.step()
        losses.append(value.item())
    if world > 1:
        reduced = torch.tensor(losses)
        torch.distributed.all_reduce(reduced)
        losses = (reduced / world).tolist()
        del wrapped, value
        dist.shutdown()  # DDP's reducer released before the group (REC.distributed.shutdown says why)
    if rank == 0:
        torch.save({"losses": losses, "state": model.state_dict()}, Path(out) / f"world{world}.pt")


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["sampled_softmax", "softmax"])
def test_two_processes_train_exactly_like_one_with_the_global_batch(tmp_path, loss):
    _steps(0, 1, "", str(tmp_path), loss)
    mp.start_processes(_steps, args=(2, str(tmp_path / "store"), str(tmp_path), loss), nprocs=2, join=True,
                       start_method="spawn")
    one, two = (torch.load(tmp_path / f"world{w}.pt") for w in (1, 2))
    assert one["losses"] == pytest.approx(two["losses"], rel=1e-5, abs=1e-6)
    for key, value in one["state"].items():
        assert torch.allclose(value, two["state"][key], rtol=1e-4, atol=1e-6), (key, (value - two["state"][key]).abs().max())
    assert json.dumps(one["losses"]) != json.dumps([one["losses"][0]] * 3)  # it trained


def test_a_refused_loss_is_one_line_before_any_run(tmp_path, capsys):
    from REC.app.launch import main as launch_main

    from .conftest import call_main
    status, _, err = call_main(launch_main, ["--config_file", "PixelNet/sasrec.yaml", "overall/ViT.yaml",
                                             "--loss=softmax", "--encoder_pretrained=false",
                                             f"--output_dir={tmp_path / 'runs'}"], capsys)
    line = err.strip().splitlines()[-1]
    assert status == 2 and "Traceback" not in err, err[-2000:]
    assert line.startswith("error: command line: key 'loss' = 'softmax': model MOSASRec") and "sampled_softmax" in line
    assert not (tmp_path / "runs").exists()


def test_the_shipped_sweep_and_settings_build(capsys):
    from REC import sweep

    from .conftest import ROOT, call_main
    status, out, err = call_main(sweep.main, ["--config_file", "IDNet/sasrec.yaml", "overall/ID.yaml",
                                              "overall/sampled_softmax.yaml", "--grid",
                                              ROOT / "sweeps" / "sampled_softmax.yaml", "--trials", "5", "--dry_run"],
                                 capsys)
    assert status == 0, err
    assert len(out.strip().splitlines()) == 5
    config = build_config(["IDNet/sasrec.yaml", "overall/ID.yaml", "overall/sampled_softmax.yaml"])
    assert config["loss"] == "sampled_softmax" and config.source_of("loss").endswith("sampled_softmax.yaml")


def test_the_cold_items_protocols_held_out_items_reach_the_objective_and_are_never_drawn(seq_data):
    from REC.data import prepare_split
    from REC.app.train import training_batches
    config = build_config(["IDNet/sasrec.yaml", "overall/ID.yaml"],
                          [f"--data_path={seq_data}", "--dataset=Seq", "--loss=sampled_softmax", "--num_negatives=64",
                           "--cold_item_ratio=0.2", *SMALL["SASRec"]])
    split = prepare_split(config)[1]
    assert len(split.cold_items) > 0
    model = create_model("SASRec", config, DatasetInfo.from_split(split))
    assert not model.objective.allowed[split.cold_items].any() and model.objective.allowed[split.negative_pool()].all()
    batches = training_batches(model, split, config)
    drawn = torch.cat([batches[b]["shared_negatives"] for b in range(len(batches))])
    assert not np.isin(drawn.numpy(), split.cold_items).any() and len(drawn) == 64 * len(batches)


def test_a_learned_temperature_gets_the_rec_learning_rate_and_no_weight_decay():
    from REC.trainer.optim import build_optimizer
    config = model_config("SASRec", "sampled_softmax", "--learn_temperature=true",
                          "--optim_args={learning_rate: 1.0e-3, weight_decay: 0.1}")
    model = create_model("SASRec", config, DatasetInfo(30, 10))
    groups = {g["name"]: g for g in build_optimizer(model, config).param_groups}
    assert [p is model.objective.log_temperature for p in groups["objective"]["params"]] == [True]
    assert (groups["objective"]["lr"], groups["objective"]["weight_decay"]) == (1e-3, 0.0)
    assert groups["rec"]["weight_decay"] == 0.1
    assert not any(p is model.objective.log_temperature for p in groups["rec"]["params"])
