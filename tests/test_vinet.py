"""ViNet models on a synthetic log whose signal is in the item FEATURES: items fall into groups, each user draws
most of their items from one group (``visual_log``), and an item's feature is its group's random direction plus
noise. Feature files are aligned to the internal item ids (items numbered by first appearance in the CSV), row 0
padding."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from REC.data import EvalBatches, build_train_batches, leave_one_out, load_interactions
from REC.data.synthetic import visual_log, write_csv
from REC.evaluator import FullRankingEvaluator
from REC.model import create_model, list_models
from REC.model.base import DatasetInfo
from REC.model.ViNet.feature_table import FeatureFileError, FeatureTable, load_item_features
from REC.app.launch import main as launch_main
from REC.app.configure import build_config
from REC.app.train import create_run

from .conftest import ROOT, call_main, pop_test_metrics, run_main, train_steps
from .model_cases import SMALL

N_GROUPS, DIM = 6, 16
# run config file -> (registered model, feature file)
CASES = {
    "ViNet/visrank.yaml": ("VisRank", "RN50.npy"),
    "ViNet/vbpr.yaml": ("VBPR", "RN50.npy"),
    "ViNet/acf.yaml": ("ACF", "RN50_layer4.npy"),
    "ViNet/sasrec_v.yaml": ("FSASRec", "RN50.npy"),
    "ViNet/sasrec_vid.yaml": ("FSASRec", "RN50.npy"),
}
TRAINED = [f for f, (name, _) in CASES.items() if name != "VisRank"]
# training settings of the beats-Pop run: the README's learning rates (1e-4) need far more than a few epochs
FAST = {
    "ViNet/vbpr.yaml": ["--epochs=5", "--optim_args={learning_rate: 1.0e-2, weight_decay: 0}"],
    "ViNet/acf.yaml": ["--epochs=5", "--optim_args={learning_rate: 1.0e-2, weight_decay: 0}"],
    "ViNet/sasrec_v.yaml": ["--epochs=5", "--train_batch_size=64"],
    "ViNet/sasrec_vid.yaml": ["--epochs=5", "--train_batch_size=64"],
}


def group_features(group, regions=None, noise=0.4, seed=1):
    """[n, DIM] group direction + noise, or [n, regions, DIM] where one random region carries the direction."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(N_GROUPS, DIM))
    if regions is None:
        return directions[group] + noise * rng.normal(size=(len(group), DIM))
    f = noise * rng.normal(size=(len(group), regions, DIM))
    f[np.arange(len(group)), rng.integers(0, regions, len(group))] += directions[group]
    return f


@pytest.fixture(scope="module")
def vis_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("visdata")
    frame, group_of = visual_log(n_users=300, n_items=120, n_groups=N_GROUPS, min_len=8, max_len=20, p_group=0.85,
                                 seed=0)
    write_csv(frame, folder / "Vis.csv")
    tokens = load_interactions(str(folder), "Vis").item_tokens.to_list()
    group = np.array([group_of[t] for t in tokens[1:]])  # of internal ids 1, 2, ...
    flat = np.zeros((len(tokens), DIM), np.float32)
    flat[1:] = group_features(group)
    np.save(folder / "RN50.npy", flat)
    maps = np.zeros((len(tokens), 2, 2, DIM), np.float32)  # [N, H, W, D], as RN50_layer4.npy
    maps[1:] = group_features(group, regions=4).reshape(-1, 2, 2, DIM)
    np.save(folder / "RN50_layer4.npy", maps)
    return folder


def data_args(folder, config_file, out=None):
    name, features = CASES[config_file]
    args = [f"--data_path={folder}", "--dataset=Vis", "--show_progress=false", f"--v_feat_path={folder / features}",
            f"--v_feat_dim={DIM}", *SMALL[name]]
    return args + ([f"--output_dir={out}"] if out else [])


def build(config_file, folder, *extra):
    cfg = build_config([config_file, "overall/ID.yaml"], [*data_args(folder, config_file), *extra])
    split = leave_one_out(load_interactions(str(folder), "Vis"))
    torch.manual_seed(0)
    return cfg, split, create_model(cfg["model"], cfg, DatasetInfo.from_split(split))


# ------------------------------------------------------------------------------------------ feature files
def test_loader_reads_float32_rows_by_internal_id(tmp_path):
    np.save(tmp_path / "f.npy", np.arange(12, dtype=np.float64).reshape(4, 3))
    table = load_item_features(tmp_path / "f.npy", 4)
    assert table.dtype == torch.float32 and table.shape == (4, 3) and table[2].tolist() == [6.0, 7.0, 8.0]
    header_only = load_item_features(tmp_path / "f.npy", 4, shapes_only=True)  # the launcher's preflight
    assert header_only.device.type == "meta" and header_only.shape == (4, 3)


def test_loader_errors_name_the_file_and_the_key(tmp_path):
    path = tmp_path / "f.npy"
    np.save(path, np.zeros((5, 3), np.float32))
    cases = [
        (dict(path=None, item_num=5), "'v_feat_path' is null"),
        (dict(path=tmp_path / "none.npy", item_num=5), "does not exist"),
        (dict(path=path, item_num=7), "has 5 rows, but the dataset needs item_num = 7 rows (6 items + 1 padding row"),
        (dict(path=path, item_num=5, ndim=(3, 4)), "[item_num, R, D] (R regions) or [item_num, H, W, D]"),
        (dict(path=path, item_num=5, expected_width=8), "has feature width 3"),
    ]
    for kwargs, message in cases:
        with pytest.raises(FeatureFileError, match="v_feat_path") as err:
            load_item_features(**kwargs)
        assert message in str(err.value) and (kwargs["path"] is None or str(kwargs["path"]) in str(err.value))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FeatureFileError, match="its header says object data"):
        load_item_features(tmp_path / "obj.npy", 1)
    assert issubclass(FeatureFileError, ValueError)  # main.py reports ValueErrors with exit status 2


def test_on_host_features_do_not_follow_the_model():
    held = FeatureTable(torch.arange(6.0).view(3, 2), on_host=True)
    assert held.to(torch.float64).table.dtype == torch.float32
    assert held(torch.tensor([[2], [0]])).tolist() == [[[4.0, 5.0]], [[0.0, 1.0]]]


def test_every_vinet_model_has_a_run_config():
    assert sorted({name for name, _ in CASES.values()}) == list_models(family="ViNet")


@pytest.mark.parametrize("config_file", CASES)
def test_model_builds_on_meta_and_keeps_features_out_of_the_checkpoint(config_file, vis_data):
    cfg = build_config([config_file, "overall/ID.yaml"], data_args(vis_data, config_file))
    split = leave_one_out(load_interactions(str(vis_data), "Vis"))
    model = create_model(cfg["model"], cfg, DatasetInfo.from_split(split, shapes_only=True))
    assert model.features.table.device.type == "meta" and all(p.is_meta for p in model.parameters())
    _, _, model = build(config_file, vis_data)
    assert not any("features" in k for k in model.state_dict())
    assert model.to(torch.float64).features.table.dtype == torch.float64  # moves with the model
    assert config_file == "ViNet/visrank.yaml" or any(p.requires_grad for p in model.parameters())


# ------------------------------------------------------------------------------------------ scoring
@pytest.mark.parametrize("config_file", CASES)
def test_scoring_shapes_and_all_items_equal_item_by_item(config_file, vis_data):
    cfg, split, model = build(config_file, vis_data)
    model.eval()
    batch = next(iter(EvalBatches(split.test, cfg["MAX_ITEM_LIST_LENGTH"], 16)))
    with torch.no_grad():
        items = model.item_representations()
        users = model.user_representations(batch)
        scores = model.score(users, items)
        one_by_one = torch.cat([model.score(users, items[i:i + 1]) for i in range(split.item_num)], 1)
    assert scores.shape == (16, split.item_num) and torch.isfinite(scores[:, 1:]).all()
    torch.testing.assert_close(scores, one_by_one, rtol=1e-5, atol=1e-5)


def visrank_reference(table, history, method, top_num, limit):
    """The original's per-user VisRank, one user at a time."""
    f = torch.nn.functional.normalize(table, dim=-1)
    kept = history[-limit:]
    sims = f[kept] @ f.T  # [L, N]
    k = {"maximum": 1, "average_top_k": min(top_num, len(kept))}.get(method, len(kept))
    score = sims.topk(k, dim=0).values.mean(0)
    score[0] = -torch.inf
    return score


@pytest.mark.parametrize("method", ["maximum", "average_top_k", "average"])
def test_visrank_matches_the_per_user_original(method, vis_data):
    cfg, split, model = build("ViNet/visrank.yaml", vis_data, f"--method={method}", "--top_num=3",
                              "--history_limit=6")
    batch = next(iter(EvalBatches(split.test, cfg["MAX_ITEM_LIST_LENGTH"], 40)))
    scores = model.score(model.user_representations(batch), model.item_representations())
    table = model.features.table
    for row in range(40):
        history = batch["hist_item"][batch["hist_row"] == row]
        expected = visrank_reference(table, history, method, 3, 6)
        torch.testing.assert_close(scores[row], expected, rtol=1e-5, atol=1e-5)


def test_visrank_scores_a_user_without_history_zero(vis_data):
    _, split, model = build("ViNet/visrank.yaml", vis_data, "--method=average_top_k", "--top_num=2")
    batch = {"user_id": torch.tensor([1, 2]), "hist_row": torch.tensor([1]), "hist_item": torch.tensor([5])}
    for method in ("maximum", "average_top_k", "average"):
        model.method = method
        scores = model.score(model.user_representations(batch), model.item_representations())
        assert (scores[0, 1:] == 0).all() and scores[1, 5] == pytest.approx(1.0) and scores[:, 0].isinf().all()


def evaluate(model, split, cfg, batch_size=64):
    evaluator = FullRankingEvaluator(["Recall", "NDCG"], [10], 7, torch.device("cpu"))
    return evaluator.evaluate(model, EvalBatches(split.test, cfg["MAX_ITEM_LIST_LENGTH"], batch_size)).metrics


def test_visrank_needs_the_features_and_no_eval_batch_size_of_one(vis_data):
    cfg, split, model = build("ViNet/visrank.yaml", vis_data)
    result = evaluate(model, split, cfg)
    assert evaluate(model, split, cfg, batch_size=1) == result == evaluate(model, split, cfg, batch_size=300)
    shuffled = model.features.table[torch.randperm(split.item_num, generator=torch.Generator().manual_seed(0))]
    model.features.table = shuffled  # the same features on the wrong items: the signal is gone
    assert evaluate(model, split, cfg)["ndcg@10"] < 0.5 * result["ndcg@10"]


# ------------------------------------------------------------------------------------------ training
def test_acf_batches_carry_the_user_of_each_chunk(vis_data):
    cfg, split, model = build("ViNet/acf.yaml", vis_data)
    batch = build_train_batches(model.input_type, split, cfg)[0]
    histories = {int(u): set(split.train_items[a:b].tolist())
                 for u, a, b in zip(split.train_users, split.train_indptr[:-1], split.train_indptr[1:])}
    for user, items, target in zip(batch["user_id"].tolist(), batch["items"].tolist(), batch["target"].tolist()):
        assert {i for i in items if i} | {target} <= histories[user]


def test_vbpr_projection_parameters_form_the_modal_group(vis_data):
    from REC.trainer import build_optimizer
    cfg, _, model = build("ViNet/vbpr.yaml", vis_data)
    groups = {g["name"]: g for g in build_optimizer(model, cfg).param_groups}
    assert {id(p) for p in groups["modal"]["params"]} == {id(model.projection.weight), id(model.bias_projection.weight)}
    assert (groups["modal"]["lr"], groups["modal"]["weight_decay"]) == (1e-4, 0.1)
    assert (groups["rec"]["lr"], groups["rec"]["weight_decay"]) == (1e-3, 0)


def test_fsasrec_hybrid_adds_an_id_table_to_the_feature_projection(vis_data):
    _, split, frozen = build("ViNet/sasrec_v.yaml", vis_data)
    _, _, hybrid = build("ViNet/sasrec_vid.yaml", vis_data)
    assert frozen.item_embedding.projection.in_features == DIM and frozen.item_embedding.id_embedding is None
    assert hybrid.item_embedding.projection.in_features == DIM + 32
    assert hybrid.item_embedding.id_embedding.weight.shape == (split.item_num, 32)
    assert frozen.item_embedding.projection.weight.std().item() == pytest.approx(0.02, rel=0.2)  # N(0, 0.02)


@pytest.mark.parametrize("config_file", TRAINED)
def test_loss_is_a_finite_scalar_and_decreases(config_file, vis_data):
    cfg, split, model = build(config_file, vis_data)
    batch = build_train_batches(model.input_type, split, cfg)[0]
    losses = train_steps(model, batch, steps=30, lr=3e-3)
    assert losses[-1] < 0.7 * losses[0], losses


# ------------------------------------------------------------------------------------------ main.py
@pytest.fixture(scope="module")
def pop_result(vis_data, tmp_path_factory):
    return pop_test_metrics(vis_data, "Vis", tmp_path_factory.mktemp("pop"))


@pytest.mark.parametrize("config_file", CASES)
def test_short_run_beats_pop(config_file, vis_data, tmp_path, pop_result):
    result = run_main(["--device", "cpu", "--config_file", config_file, "overall/ID.yaml",
                       *data_args(vis_data, config_file, tmp_path), *FAST.get(config_file, [])]).result["test"]
    print(config_file, result, "pop", pop_result)
    assert result["recall@10"] > pop_result["recall@10"] and result["ndcg@10"] > pop_result["ndcg@10"], (result, pop_result)


def test_bad_feature_files_fail_before_any_run_starts(vis_data, tmp_path, capsys):
    """Through main.py's main (in this process): exit status 2, the file and the key named."""
    item_num = np.load(vis_data / "RN50.npy").shape[0]
    np.save(tmp_path / "short.npy", np.zeros((5, DIM), np.float32))
    np.save(tmp_path / "narrow.npy", np.zeros((item_num, 3), np.float32))
    cases = {
        "--v_feat_path=nowhere/RN50.npy": "'nowhere/RN50.npy' (config key 'v_feat_path') does not exist",
        f"--v_feat_path={tmp_path / 'short.npy'}": f"has 5 rows, but the dataset needs item_num = {item_num} rows",
        f"--v_feat_path={tmp_path / 'narrow.npy'}": "has feature width 3",
        "--v_feat_path=null": "config key 'v_feat_path' is null",
    }
    out = tmp_path / "runs"
    for arg, message in cases.items():
        status, stdout, stderr = call_main(launch_main, ["--config_file", "ViNet/vbpr.yaml", "overall/ID.yaml",
                                                         *data_args(vis_data, "ViNet/vbpr.yaml", out), arg], capsys)
        assert status == 2 and message in stderr, (arg, stdout[-2000:], stderr[-2000:])
    assert not out.exists()  # no run directory for a run that cannot start
    with pytest.raises(FeatureFileError, match="\\[item_num, R, D\\]"):  # ACF on a flat table
        create_run(["ViNet/acf.yaml", "overall/ID.yaml"],
                   [*data_args(vis_data, "ViNet/acf.yaml", out), f"--v_feat_path={vis_data / 'RN50.npy'}"])


@pytest.mark.slow
def test_two_process_vbpr_and_its_checkpoint_reload_the_features(vis_data, tmp_path):
    run = run_main(["--device", "cpu:2", "--config_file", "ViNet/vbpr.yaml", "overall/ID.yaml",
                    *data_args(vis_data, "ViNet/vbpr.yaml", tmp_path), *FAST["ViNet/vbpr.yaml"]])
    result = run.result
    assert result["world_size"] == 2 and result["test"]["ndcg@10"] > 0.15
    ev = subprocess.run([sys.executable, "-m", "REC", "evaluate", str(run.run_dir), "--device", "cpu"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert '"ndcg@10": ' + str(result["test"]["ndcg@10"]) in ev.stdout


@pytest.mark.parametrize("loss", ["softmax", "sampled_softmax"])
@pytest.mark.parametrize("config_file", [f for f in TRAINED if f != "ViNet/sasrec_vid.yaml"])  # one per model
def test_many_negative_losses_train_vinet_models(config_file, loss, vis_data):
    """ViNet models expose their rows like the ID models: the same objectives apply (REC/model/objectives.py)."""
    from REC.app.train import training_batches
    cfg, split, model = build(config_file, vis_data, f"--loss={loss}", "--num_negatives=16")
    batch = training_batches(model, split, cfg)[0]
    model.eval()
    with torch.no_grad():
        rows = model.target_rows(batch)
        some = rows.targets[:5]
        assert torch.allclose(rows.item_vectors(some), model.item_representations()[some], atol=1e-5)
    model.train()
    losses = train_steps(model, batch, steps=6, lr=3e-3)
    assert losses[-1] < losses[0], losses
