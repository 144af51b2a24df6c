"""Every registered IDNet model, parametrized over the registry: shapes, scoring, a decreasing loss, beating Pop.
PixelNet and ViNet models have their own files (they need covers or feature files); model_cases.py covers all."""
import pytest
import torch

from REC.data import EvalBatches, build_train_batches, leave_one_out, load_interactions
from REC.model import create_model, list_models
from REC.model.base import DatasetInfo
from REC.app.configure import build_config

from .conftest import pop_test_metrics, run_main, train_steps
from .model_cases import BEAT_POP, SMALL

MODELS = list_models(family="IDNet")
TRAINED = [m for m in MODELS if m != "Pop"]


def model_config(name, seq_data, *extra):
    family = "IDNet"
    return build_config([f"{family}/{name.lower()}.yaml", "overall/ID.yaml"],
                        [f"--data_path={seq_data}", "--dataset=Seq", "--show_progress=false", *SMALL[name], *extra])


def build(name, seq_data):
    cfg = model_config(name, seq_data)
    split = leave_one_out(load_interactions(str(seq_data), "Seq"))
    torch.manual_seed(0)
    return cfg, split, create_model(name, cfg, DatasetInfo.from_split(split))


def test_every_model_has_a_test_case():
    assert sorted(SMALL) == list_models()


@pytest.mark.parametrize("name", MODELS)
def test_scoring_shapes_and_all_items_equal_item_by_item(name, seq_data):
    cfg, split, model = build(name, seq_data)
    model.eval()
    batch = next(iter(EvalBatches(split.test, cfg["MAX_ITEM_LIST_LENGTH"], 16)))
    with torch.no_grad():
        items = model.item_representations()
        users = model.user_representations(batch)
        scores = model.score(users, items)
        assert scores.shape == (16, split.item_num) and torch.isfinite(scores).all()
        one_by_one = torch.cat([model.score(users, items[i:i + 1]) for i in range(split.item_num)], 1)
    torch.testing.assert_close(scores, one_by_one, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TRAINED)
def test_loss_is_a_finite_scalar_and_decreases(name, seq_data):
    cfg, split, model = build(name, seq_data)
    batch = build_train_batches(model.input_type, split, cfg)[0]
    losses = train_steps(model, batch, steps=30, lr=3e-3)
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.fixture(scope="module")
def pop_result(seq_data, tmp_path_factory):
    return pop_test_metrics(seq_data, "Seq", tmp_path_factory.mktemp("pop"))


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAINED)
def test_short_training_beats_pop(name, seq_data, tmp_path, pop_result):
    args = ["--config_file", f"IDNet/{name.lower()}.yaml", "overall/ID.yaml", f"--data_path={seq_data}",
            "--dataset=Seq", f"--output_dir={tmp_path}", "--show_progress=false", *SMALL[name], *BEAT_POP.get(name, [])]
    result = run_main(args).result["test"]
    assert result["recall@10"] > pop_result["recall@10"] and result["ndcg@10"] > pop_result["ndcg@10"], (result, pop_result)
