"""item_table_updates: sparse: a row-sparse item table and the lazy AdamW that moves only the rows a step touched."""
import pytest
import torch

from REC.config import ConfigError
from REC.app.configure import build_config
from REC.model import create_model
from REC.model.base import DatasetInfo
from REC.trainer.optim import build_optimizer
from REC.trainer.row_sparse import RowSparseAdamW
from REC.utils.batch_keys import ITEMS, NEGATIVES, USER_ID

from .conftest import ROOT, call_main, run_main, sasrec_args


def lazy_adamw_row(p, grads, lr, wd, betas=(0.9, 0.999), eps=1e-8, steps_before=0):
    """AdamW written out for one row that receives ``grads`` at consecutive global steps."""
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    for t, g in enumerate(grads, start=steps_before + 1):
        p = p * (1 - lr * wd)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        p = p - lr / (1 - betas[0] ** t) * m / ((v / (1 - betas[1] ** t)).sqrt() + eps)
    return p


def test_only_the_rows_a_step_touched_move():
    torch.manual_seed(0)
    table = torch.nn.Embedding(6, 3, sparse=True)
    start = table.weight.detach().clone()
    opt = RowSparseAdamW(table.parameters(), lr=0.1, weight_decay=0.1)
    grads = {1: [], 4: []}
    for rows in ([1, 4, 4], [1]):
        opt.zero_grad()
        out = table(torch.tensor(rows))
        (out * torch.arange(1.0, 4.0)).sum().backward()
        g = table.weight.grad.coalesce().to_dense()
        for r in set(rows):
            grads[r].append(g[r].clone())
        opt.step()
    w = table.weight.detach()
    assert torch.equal(w[[0, 2, 3, 5]], start[[0, 2, 3, 5]])  # untouched rows: no decay, no step
    assert torch.allclose(w[1], lazy_adamw_row(start[1], grads[1], 0.1, 0.1), atol=1e-6)
    # row 4 was touched at step 1 only: its moments did not decay at step 2, its weight did not move
    assert torch.allclose(w[4], lazy_adamw_row(start[4], grads[4], 0.1, 0.1), atol=1e-6)


def test_dense_gradients_get_plain_adamw():
    torch.manual_seed(0)
    a = torch.nn.Linear(4, 2)
    b = torch.nn.Linear(4, 2)
    b.load_state_dict(a.state_dict())
    ours = RowSparseAdamW(a.parameters(), lr=0.01, weight_decay=0.1)
    theirs = torch.optim.AdamW(b.parameters(), lr=0.01, weight_decay=0.1, eps=1e-8)
    x = torch.randn(8, 4)
    for _ in range(5):
        for model, opt in ((a, ours), (b, theirs)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_the_option_makes_the_id_table_sparse_and_picks_the_lazy_optimizer():
    config = build_config([ROOT / "IDNet" / "sasrec.yaml", ROOT / "overall" / "ID.yaml"],
                          ["--embedding_size=16", "--item_table_updates=sparse"])
    model = create_model("SASRec", config, DatasetInfo(50, 10))
    assert model.item_embedding.sparse and isinstance(build_optimizer(model, config), RowSparseAdamW)
    default = build_config([ROOT / "IDNet" / "sasrec.yaml", ROOT / "overall" / "ID.yaml"], ["--embedding_size=16"])
    dense = create_model("SASRec", default, DatasetInfo(50, 10))
    assert not dense.item_embedding.sparse and type(build_optimizer(dense, default)) is torch.optim.AdamW


@pytest.mark.parametrize("name", ["MF", "LightGCN"])
def test_the_option_makes_the_user_table_sparse_too_and_a_step_moves_only_the_batch_rows(name):
    """MF and LightGCN learn a vector per user: with the option, a step moves the rows of its batch's users and
    items only (at millions of users the dense user table's AdamW pass would be the whole step); the default
    stays dense."""
    files = [ROOT / "IDNet" / f"{name.lower()}.yaml", ROOT / "overall" / "ID.yaml"]
    users, items = torch.tensor([1, 1, 2, 4]), torch.tensor([1, 2, 3, 2])
    info = DatasetInfo.from_pairs(8, 6, users.numpy(), items.numpy())
    extra = ["--propagation=epoch"] if name == "LightGCN" else []
    # weight decay, so that a dense AdamW would move every row: only the lazy one leaves untouched rows alone
    extra += ["--optim_args.weight_decay=0.1"]
    config = build_config(files, ["--embedding_size=8", "--item_table_updates=sparse", *extra])
    torch.manual_seed(0)
    model = create_model(name, config, info).train()
    assert model.user_embedding.sparse and model.item_embedding.sparse
    optimizer = build_optimizer(model, config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = {USER_ID: torch.tensor([1, 4]), ITEMS: torch.tensor([1, 2]), NEGATIVES: torch.tensor([5, 3])}
    optimizer.zero_grad()
    model(batch).backward()
    assert model.user_embedding.weight.grad.is_sparse
    optimizer.step()
    moved_users = (model.user_embedding.weight != before["user_embedding.weight"]).any(1).nonzero().flatten()
    moved_items = (model.item_embedding.weight != before["item_embedding.weight"]).any(1).nonzero().flatten()
    assert moved_users.tolist() == [1, 4] and moved_items.tolist() == [1, 2, 3, 5]
    dense = create_model(name, build_config(files, ["--embedding_size=8", *extra]), info)
    assert not dense.user_embedding.sparse and not dense.item_embedding.sparse


def test_a_pixelnet_model_keeps_its_user_table_dense():
    """PixelNet's items come from covers, so the option is refused there; its user table is not made sparse
    behind the refusal's back (the refusal looks at the item table, which here encodes covers)."""
    config = build_config([ROOT / "PixelNet" / "mf.yaml", ROOT / "overall" / "ViT.yaml"],
                          ["--item_table_updates=sparse", "--encoder_pretrained=false"])
    model = create_model(config["model"], config, DatasetInfo(8, 6, shapes_only=True))
    assert model.encodes_covers and not model.user_embedding.sparse
    assert not any(getattr(p, "_row_sparse_table", False) for p in model.parameters())


@pytest.mark.slow
def test_sparse_updates_train_under_ddp(seq_data, tmp_path):
    """Two gloo processes, whose DDP all-reduces the row-sparse gradient: the model learns (popularity gets
    0.148 NDCG@10 on this log), and the optimizer says which it is."""
    run = run_main(sasrec_args(seq_data, tmp_path, "--item_table_updates=sparse", "--epochs=4",
                               "--optim_args.learning_rate=3e-3", "--device", "cpu:2"))
    said = run.proc.stdout + run.proc.stderr
    assert "lazy AdamW" in said
    assert run.result["test"]["ndcg@10"] > 0.2, run.result


def test_lightgcn_with_epoch_propagation_trains_with_sparse_updates(seq_data, tmp_path):
    """LightGCN reads its whole item table only while it propagates at every step; with propagation: epoch a step
    reads the batch's rows, so the sparse option applies: the run trains (its loss falls) and beats popularity
    (0.148 NDCG@10 on this log)."""
    args = ["--config_file", "IDNet/lightgcn.yaml", "overall/ID.yaml", f"--data_path={seq_data}", "--dataset=Seq",
            f"--output_dir={tmp_path}", "--embedding_size=32", "--show_progress=false", "--epochs=4",
            "--train_batch_size=64", "--optim_args.learning_rate=1e-2", "--optim_args.weight_decay=0",
            "--propagation=epoch", "--item_table_updates=sparse"]
    run = run_main(["--device", "cpu", *args])
    assert "lazy AdamW" in run.proc.stdout + run.proc.stderr
    losses = [h["train_loss"] for h in run.result["history"] if "train_loss" in h]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert run.result["test"]["ndcg@10"] > 0.148, run.result


def test_the_lazy_optimizer_state_round_trips_through_a_checkpoint():
    """What resume needs: an optimizer loaded from another's state_dict continues exactly as the original."""
    torch.manual_seed(0)
    tables = [torch.nn.Embedding(20, 4, sparse=True) for _ in range(2)]
    tables[1].load_state_dict(tables[0].state_dict())
    opts = [RowSparseAdamW(t.parameters(), lr=0.05, weight_decay=0.1) for t in tables]

    def step(table, opt, rows):
        opt.zero_grad()
        table(torch.tensor(rows)).sum().backward()
        opt.step()
    for rows in ([1, 2], [2, 3]):
        step(tables[0], opts[0], rows)
        step(tables[1], opts[1], rows)
    restored = RowSparseAdamW(tables[1].parameters(), lr=0.05, weight_decay=0.1)
    restored.load_state_dict(opts[1].state_dict())
    step(tables[0], opts[0], [3, 5])
    step(tables[1], restored, [3, 5])
    assert torch.equal(tables[0].weight, tables[1].weight)


@pytest.mark.parametrize("case", ["clip_grad_norm", "softmax", "LightGCN", "PixelNet", "GPUs"])
def test_the_option_is_refused_where_it_cannot_apply(seq_data, tmp_path, capsys, case):
    """Before a run directory exists: where the table's gradient would be dense (DDP would stop at the first step),
    where there is no ID table to make sparse, where gradients are clipped, and on NCCL, which cannot all-reduce
    sparse tensors."""
    from REC.distributed import DeviceSpec
    from REC.app.train import preflight

    settings = {"clip_grad_norm": ["--clip_grad_norm=1.0"], "softmax": ["--loss=softmax"],
                "PixelNet": ["--encoder_pretrained=false"]}.get(case, [])
    files = {"LightGCN": ["IDNet/lightgcn.yaml", "overall/ID.yaml"],
             "PixelNet": ["PixelNet/sasrec.yaml", "overall/ViT.yaml"]}.get(case, ["IDNet/sasrec.yaml", "overall/ID.yaml"])
    config = build_config([ROOT / f for f in files],
                          [f"--data_path={seq_data}", "--dataset=Seq", "--item_table_updates=sparse", *settings])
    devices = DeviceSpec.parse("0,1") if case == "GPUs" else None
    with pytest.raises(ConfigError, match="item_table_updates' = 'sparse'") as refused:
        preflight(config, devices=devices)
    expected = {"clip_grad_norm": "clip_grad_norm", "softmax": "loss: softmax", "LightGCN": "whole graph",
                "PixelNet": "encodes its items from covers", "GPUs": "NCCL"}[case]
    assert expected in str(refused.value)
    status, _, err = call_main(__import__("REC.app.launch", fromlist=["main"]).main, sasrec_args(
        seq_data, tmp_path, "--item_table_updates=sparse", "--clip_grad_norm=1.0"), capsys)
    assert status == 2 and "clip_grad_norm" in err and not list(tmp_path.rglob("config.yaml"))
