"""The four registries (models, image encoders, training-example types, metrics) are one class, REC.utils.registry's
``Registry``, and every entry of each is exercised: a model by the shipped-config build, an encoder by a forward on
the meta device, a training-example type by a model that trains on it, a metric on a hand-made ranking."""
from __future__ import annotations

import pytest
import torch
import yaml

from REC.data.training import TRAIN_DATASETS
from REC.evaluator.metrics import METRICS
from REC.model.encoders import build_item_encoder
from REC.model.encoders.registry import ENCODERS
from REC.model.registry import MODELS
from REC.utils.registry import Registry

from .conftest import ROOT
from .test_shipped_configs import CASES

REGISTRIES = {"model": MODELS, "encoder": ENCODERS, "training-example type": TRAIN_DATASETS, "metric": METRICS}


@pytest.mark.parametrize("kind", REGISTRIES)
def test_every_registry_is_one_class_with_lookups_alike(kind):
    registry = REGISTRIES[kind]
    assert isinstance(registry, Registry) and registry.kind == kind and len(registry) > 0
    name = registry.names()[0]
    assert name in registry and registry.get(name) is registry[name]
    typo = name[:-1] + ("x" if name[-1] != "x" else "y")
    with pytest.raises(registry.error, match=rf"unknown {kind} '{typo}' \(did you mean '{name}'\?\); known: "):
        registry.get(typo)
    assert registry.names(name.upper()) == [name]  # shell patterns, whatever the case


def test_a_registry_refuses_a_second_entry_under_a_name_and_folds_case_where_asked():
    names = Registry("thing", fold_case=True)
    first = names.register("NDCG")(object())
    assert names.get("ndcg") is first and names.names() == ["NDCG"]
    with pytest.raises(ValueError, match="thing 'ndcg' is already registered"):
        names.add("ndcg", object())
    names.add("NDCG", first)  # the same entry again (a module imported twice) is fine


def test_every_model_is_built_by_a_shipped_config():
    """tests/test_shipped_configs.py builds each of CASES on the meta device: every registered model is among them."""
    shipped = {yaml.safe_load((ROOT / case[0]).read_text()).get("model") for case in CASES}
    assert set(MODELS.names()) <= shipped, sorted(set(MODELS.names()) - shipped)


def test_every_training_example_type_is_what_some_model_trains_on():
    """tests/test_trust_batches.py and tests/test_protocols.py parametrize over the type registry; a type no model
    uses would be code no run reaches."""
    used = {cls.input_type for _, cls in MODELS.items()}
    assert set(TRAIN_DATASETS.names()) <= used, sorted(set(TRAIN_DATASETS.names()) - used)


@pytest.mark.parametrize("name", ENCODERS.names())
def test_every_encoder_builds_and_encodes_on_the_meta_device(name):
    config = dict(encoder=name, encoder_pretrained=False, encoder_weights=None, encoder_readout=None,
                  encoder_trainable_blocks=None, encoder_head_layers=[], encoder_head_activation="relu",
                  channels_last=False, encoder_grad_checkpointing=False)
    with torch.device("meta"):
        encoder = build_item_encoder(config, 8, shapes_only=True)
        side = encoder.input_size
        out = encoder(torch.empty(2, 3, side, side))
    assert out.shape == (2, 8) and out.device.type == "meta"
    assert 0 < encoder.trainable_parameters() <= encoder.total_parameters()


@pytest.mark.parametrize("name", METRICS.names())
def test_every_metric_on_a_hand_made_ranking(name):
    """User 0 ranks its positive first, user 1 second, user 2 not in the top 3: every metric is 0 without a hit,
    positive with one, at most 1, and no larger for a lower rank."""
    hits = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=torch.float64)
    values = METRICS.get(name)(hits, torch.ones(3, dtype=torch.float64), 3)
    assert values.shape == (3,) and values.dtype == torch.float64
    assert values[2] == 0 and 0 < values[1] <= values[0] <= 1, values
