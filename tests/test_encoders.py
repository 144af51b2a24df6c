"""Image item encoders: real timm/open_clip modules with random weights (no downloads). Big models are built
on the meta device (shapes and parameter counts only); real forwards use the small ones and 1-2 images."""
from __future__ import annotations

import functools

import pytest
import torch

from REC.config import ConfigError
from REC.model.encoders import Backbone, ItemEncoder, build_item_encoder, get_encoder_spec, list_encoders
from REC.model.encoders.backbone import NoFeatureMapError
from REC.model.encoders.clip_encoders import attention_pool, create_clip_visual
from REC.model.encoders.head import projection_head
from REC.model.encoders.weights import Weights

NINE = ["beit_b", "clip_rn50", "clip_rn50x4", "clip_rn50x16", "clip_rn50x64", "clip_vit_b32", "resnet50", "swin_b",
        "swin_t"]
REAL = ["resnet50", "clip_rn50", "clip_rn50x4", "clip_vit_b32", "beit_b"]  # CPU-cheap at n=1-2; swin_t: below
# what each network gives its head at its default readout, from the published architectures: CLIP ResNets' attention
# pool output (embed dim), ViT-B, BEiT-B and Swin-T's 768, Swin-B's 1024, ResNet-50's 2048 pooled channels
WIDTH = {"beit_b": 768, "clip_rn50": 1024, "clip_rn50x4": 640, "clip_rn50x16": 768, "clip_rn50x64": 1024,
         "clip_vit_b32": 768, "resnet50": 2048, "swin_b": 1024, "swin_t": 768}


def cfg(encoder: str, **over) -> dict:
    return dict(dict(encoder=encoder, encoder_pretrained=False, encoder_weights=None, encoder_readout=None,
                     encoder_trainable_blocks=None, encoder_head_layers=[], encoder_head_activation="relu",
                     channels_last=True, encoder_grad_checkpointing=False), **over)


def meta(encoder: str, out_dim: int = 16, **over) -> ItemEncoder:
    """Built for a shape check on the meta device: shapes, names and requires_grad only, no weights read
    (cached: tests only read them)."""
    return _meta(encoder, out_dim, tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in over.items()))


@functools.cache
def _meta(encoder: str, out_dim: int, over: tuple) -> ItemEncoder:
    with torch.device("meta"):
        return build_item_encoder(cfg(encoder, **dict(over)), out_dim, shapes_only=True)


@functools.cache
def real(encoder: str, readout: str | None = None, seed: int = 0) -> ItemEncoder:
    torch.manual_seed(seed)
    return build_item_encoder(cfg(encoder, encoder_readout=readout), 16).eval()


def trainable(enc: ItemEncoder) -> set[str]:
    return {n for n, p in enc.named_parameters() if p.requires_grad}


def names(enc: ItemEncoder) -> set[str]:
    return {n for n, _ in enc.named_parameters()}


def under(all_names: set[str], *prefixes: str) -> set[str]:
    return {n for n in all_names if any(n.startswith(p + ".") for p in prefixes)}


# ----------------------------------------------------------------------------------------------- the registry
def test_the_nine_are_registered():
    assert sorted(list_encoders()) == sorted(NINE)


@pytest.mark.parametrize("name", NINE)
def test_every_encoder_builds_on_meta_with_its_shipped_settings(name):
    spec = get_encoder_spec(name)
    enc = meta(name, out_dim=24)
    x = torch.empty(2, 3, enc.input_size, enc.input_size, device="meta")
    assert enc(x).shape == (2, 24)
    assert enc.readout == spec.default_readout and enc.width == WIDTH[name]
    assert len(enc.mean) == len(enc.std) == 3
    assert 0 < enc.trainable_parameters() <= enc.total_parameters()
    assert under(names(enc), "head") <= trainable(enc)  # the head always trains
    everything = meta(name, encoder_trainable_blocks=-1)
    assert everything.trainable_parameters() == everything.total_parameters()


@pytest.mark.parametrize("name", REAL)
def test_real_forward_gives_one_vector_per_image(name):
    enc = real(name)
    n = 2 if name in ("resnet50", "clip_vit_b32") else 1
    x = torch.randn(n, 3, 224, 224)
    with torch.no_grad():
        y = enc(x)
        # forward is from_prefix(prefix(x)) (stem, units, finish) where the stem and first blocks are frozen, the
        # backbone's forward in one piece where not (resnet50 trains its stem); one more forward checks the other
        if enc.frozen_units is not None:
            other = enc._read(enc.backbone(x))
        else:
            st = enc.stages
            h = st.stem(x)
            for unit in st.units:
                h = unit(h)
            other = enc._read(st.finish(h))
    assert y.shape == (n, 16) and torch.isfinite(y).all() and (y >= 0).all()  # the ReLU head
    assert (enc.frozen_units is None) == (name == "resnet50")
    assert torch.equal(y, other)  # the cut pieces compose to exactly the backbone's forward
    if enc.frozen_units is not None:  # the store's key over the frozen weights, BatchNorm's 0-dim counters too
        digest = enc.prefix_digest()
        assert len(digest) == 32 and digest == enc.prefix_digest()
        with torch.no_grad():
            next(enc.stages.units[enc.frozen_units].parameters()).add_(1.0)  # the first trainable block
        assert enc.prefix_digest() == digest


def test_input_sizes_and_native_normalisation():
    sizes = {n: meta(n).input_size for n in NINE}
    assert sizes == {**{n: 224 for n in NINE}, "clip_rn50x4": 288, "clip_rn50x16": 384, "clip_rn50x64": 448}
    assert meta("clip_vit_b32").mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert meta("resnet50").std == pytest.approx((0.229, 0.224, 0.225)) and meta("beit_b").mean == (0.5, 0.5, 0.5)
    assert {n for n in NINE if meta(n).is_convolutional} == {"resnet50", "clip_rn50", "clip_rn50x4",
                                                             "clip_rn50x16", "clip_rn50x64"}


# ----------------------------------------------------------------------------------- shipped freezing
def test_vit_trains_the_last_two_resblocks_and_never_the_projection():
    for readout, extra in (("mean", ()), ("cls", ()), ("pool", ("backbone.net.ln_post",))):
        enc = meta("clip_vit_b32", encoder_readout=readout)
        all_names = names(enc)
        expected = under(all_names, "backbone.net.transformer.resblocks.10", "backbone.net.transformer.resblocks.11",
                         "head", *extra)
        assert trainable(enc) == expected, readout
        assert not any("proj" == n.split(".")[-1] for n in all_names)  # the CLIP projection is removed
        assert bool(under(all_names, "backbone.net.ln_post")) == (readout == "pool")


@pytest.mark.parametrize("name,depths", [("swin_t", (2, 2, 6, 2)), ("swin_b", (2, 2, 18, 2))])
def test_swin_freezes_stages_0_1_and_the_patch_merging_after_stage_1(name, depths):
    enc = meta(name)
    all_names = names(enc)
    expected = under(all_names, "backbone.net.layers.2.blocks", "backbone.net.layers.3", "backbone.net.norm", "head")
    assert trainable(enc) == expected
    assert under(all_names, "backbone.net.layers.2.downsample") and not (
        under(all_names, "backbone.net.layers.2.downsample") & trainable(enc))
    assert under(all_names, "backbone.net.layers.3.downsample") <= trainable(enc)
    assert len(enc.backbone.block_layout().units) == sum(depths)


def test_beit_trains_blocks_10_11_and_the_pooling_norm():
    enc = meta("beit_b")
    assert trainable(enc) == under(names(enc), "backbone.net.blocks.10", "backbone.net.blocks.11",
                                   "backbone.net.fc_norm", "head")


def test_clip_rn50_trains_layer3_layer4_not_the_attention_pool():
    enc = meta("clip_rn50")
    all_names = names(enc)
    assert trainable(enc) == under(all_names, "backbone.net.layer3", "backbone.net.layer4", "head")
    assert under(all_names, "backbone.net.attnpool")  # kept (cls readout) but frozen


@pytest.mark.parametrize("name,window", [("clip_rn50", (78, 164)), ("clip_rn50x4", (198, 254)),
                                         ("clip_rn50x16", (306, 380)), ("clip_rn50x64", (504, 596))])
def test_clip_resnet_blocks_equal_the_original_index_windows(name, window):
    """OpenAI's ModifiedResNet registers parameters in open_clip's order; the original trained indices
    window[0]..window[1] of the tower's named_parameters()."""
    enc = meta(name, encoder_readout="cls")
    params = list(enc.backbone.net.named_parameters())
    by_blocks = {i for i, (_, p) in enumerate(params) if p.requires_grad}
    assert by_blocks == set(range(window[0], window[1] + 1))


def test_pool_readout_drops_the_clip_attention_pool():
    enc = meta("clip_rn50", encoder_readout="pool")
    assert not under(names(enc), "backbone.net.attnpool") and enc.width == 2048
    assert meta("clip_rn50").width == 1024


def test_trainable_blocks_counts_from_the_end():
    enc = meta("clip_vit_b32", encoder_trainable_blocks=0)
    assert trainable(enc) == under(names(enc), "head")
    enc = meta("swin_t", encoder_trainable_blocks=1)
    assert trainable(enc) == under(names(enc), "backbone.net.layers.3.blocks.1", "backbone.net.norm", "head")
    enc = meta("swin_t", encoder_trainable_blocks=3)  # the last block of stage 2 owns the merging that follows it
    assert under(names(enc), "backbone.net.layers.3.downsample") <= trainable(enc)
    assert not under(names(enc), "backbone.net.layers.2.blocks.4") & trainable(enc)


def test_frozen_parameters_get_no_gradient():
    enc = real("clip_rn50")
    enc(torch.randn(1, 3, 64, 64)).sum().backward()
    grads = {n for n, p in enc.named_parameters() if p.grad is not None}
    assert grads == trainable(enc)
    enc.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------------------- readouts
def test_vit_mean_readout_is_the_head_per_token_then_the_average():
    x = torch.randn(1, 3, 224, 224)
    enc = {r: real("clip_vit_b32", None if r == "mean" else r) for r in ("mean", "cls", "pool")}  # all seed 0
    assert torch.equal(enc["mean"].head[0].weight, enc["cls"].head[0].weight)  # same seed, same weights
    v = enc["pool"].backbone.net
    with torch.no_grad():
        tokens = v.transformer(v._embeds(x))  # open_clip's own embedding path, before ln_post
        out = {r: e(x) for r, e in enc.items()}
        head = enc["mean"].head
        torch.testing.assert_close(out["mean"], head(tokens).mean(dim=1))
        torch.testing.assert_close(out["cls"], head(tokens[:, 0]))
        torch.testing.assert_close(out["pool"], head(v.ln_post(tokens[:, 0])))
    assert not torch.allclose(out["mean"], out["cls"]) and not torch.allclose(out["mean"], out["pool"])


def test_clip_resnet_cls_equals_open_clips_attention_pool_and_takes_other_sizes():
    enc = real("clip_rn50")  # seed 0
    torch.manual_seed(0)
    visual = create_clip_visual("RN50", Weights(False), "clip_rn50").eval()  # the same tower, open_clip's forward
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(enc.backbone(x), visual(x))
        assert enc(torch.randn(1, 3, 160, 160)).shape == (1, 16)  # positional table resized to the 5x5 map


def test_swin_cls_is_the_first_patch_token():
    enc = real("swin_t", "cls")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        y = enc(x)
        first = enc.backbone.net.forward_features(x)[:, 0, 0]  # normed tokens [n, 7, 7, 768]
    torch.testing.assert_close(y, enc.head(first))
    assert y.shape == (1, 16) and torch.isfinite(y).all()


def test_head_mlp_activation_and_init():
    head = projection_head(32, [8, 4], 2, "tanh", xavier=True)
    assert [type(m).__name__ for m in head] == ["Linear", "Tanh", "Linear", "Tanh", "Linear", "Tanh"]
    assert all((m.bias == 0).all() for m in head if isinstance(m, torch.nn.Linear))
    assert (projection_head(32, [], 2, "none", xavier=False)[0].bias != 0).any()  # PyTorch's default init
    assert get_encoder_spec("clip_rn50").default_init_readouts == ("cls",)
    assert get_encoder_spec("resnet50").default_init_readouts == ("pool",)
    assert get_encoder_spec("clip_vit_b32").default_init_readouts == ()
    enc = meta("swin_t", encoder_head_layers=[64], encoder_head_activation="leakyrelu")
    assert [tuple(m.weight.shape) for m in enc.head if isinstance(m, torch.nn.Linear)] == [(64, 768), (16, 64)]


@pytest.mark.parametrize("capability,converted", [("AVX2", False), ("DEFAULT", False), ("AVX512", True)])
def test_channels_last_where_it_pays(monkeypatch, capability, converted):
    """On CPU, channels-last only where torch's kernels use AVX-512 (measured faster there, bench_memory_format);
    the vectors are the default layout's to fp32 rounding either way."""
    def fresh(**over):  # not real()'s shared encoder, whose layout other tests' forwards have set
        torch.manual_seed(0)
        return build_item_encoder(cfg("resnet50", **over), 16).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    with torch.no_grad():
        reference = fresh(channels_last=False)(x)
        enc = fresh()
        got = enc(x)
    weight = enc.backbone.net.conv1.weight
    assert enc.channels_last and weight.is_contiguous(memory_format=torch.channels_last) == converted
    assert weight.is_contiguous() != converted
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ frozen features
@pytest.mark.parametrize("name,readout,size", [
    ("clip_rn50", "cls", 64), ("clip_rn50", "pool", 64),              # CLIP ResNet: layer4, NCHW
    ("clip_vit_b32", "mean", 224), ("clip_vit_b32", "pool", 224),     # CLIP ViT: tokens before ln_post
    ("timm/test_resnet", None, 64), ("timm/test_vit", None, 160),     # timm CNN (NCHW), ViT (class token)
    ("swin_t", "pool", 224), ("swin_t", "cls", 224),                  # Swin: NHWC
])
def test_pooled_and_feature_map_equal_the_direct_computation(name, readout, size):
    """What ``REC.app.extract`` writes, bit for bit as computed from the library's modules: ``pooled`` is the readout
    a head would receive (the ViT ``mean`` readout: the average token), ``feature_map`` the last map channels
    last or the patch tokens without the class token (the CLIP ViT's before ln_post, whatever the readout)."""
    b = real(name, readout).backbone
    net = b.net
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pooled, fmap = b.pooled(x), b.feature_map(x)
        if name == "clip_rn50":
            last = net.layer4(net.layer3(net.layer2(net.layer1(net.stem(x)))))
            expected_map = last.permute(0, 2, 3, 1)
            expected = attention_pool(net.attnpool, last) if readout == "cls" else last.mean(dim=(2, 3))
        elif name == "clip_vit_b32":
            tokens = net.transformer(b._stem(x))
            expected_map = tokens[:, 1:]
            expected = tokens.mean(dim=1) if readout == "mean" else net.ln_post(tokens[:, 0])
            torch.testing.assert_close(tokens, net.transformer(net._embeds(x)))  # open_clip's own embedding
        else:
            features = net.forward_features(x)
            if name == "timm/test_vit":
                expected_map = features[:, net.num_prefix_tokens:]
            else:
                expected_map = features if name == "swin_t" else features.permute(0, 2, 3, 1)
            expected = features[:, 0, 0] if readout == "cls" else net(x)  # timm's own pooling (num_classes=0)
    assert b.has_feature_map and pooled.shape == (2, b.width)
    assert torch.equal(pooled, expected) and torch.equal(fmap, expected_map)


def test_a_backbone_without_a_feature_map_says_so():
    class Opaque(Backbone):
        def forward(self, images):
            return images.mean(dim=(2, 3))

    b = Opaque(torch.nn.Identity(), width=3, input_size=8, mean=(0, 0, 0), std=(1, 1, 1), is_convolutional=False)
    x = torch.randn(1, 3, 8, 8)
    assert not b.has_feature_map and torch.equal(b.pooled(x), x.mean(dim=(2, 3)))
    with pytest.raises(NoFeatureMapError, match=r"Opaque\) gives no feature map"):
        b.feature_map(x)


# -------------------------------------------------------------------------------------------------- weights
def test_timm_weights_from_a_local_file(tmp_path):
    src = real("resnet50").backbone.net
    path = tmp_path / "resnet50.pth"
    torch.save(src.state_dict(), path)
    torch.manual_seed(4)
    enc = build_item_encoder(cfg("resnet50", encoder_pretrained=True, encoder_weights=str(path)), 16)
    for (n, a), b in zip(src.state_dict().items(), enc.backbone.net.state_dict().values()):
        assert torch.equal(a, b), n


def test_open_clip_weights_from_a_tower_or_a_full_checkpoint(tmp_path):
    src = real("clip_rn50").backbone.net.state_dict()
    tower, full = tmp_path / "rn50_visual.pt", tmp_path / "rn50_clip.pt"
    torch.save(src, tower)
    torch.save({"state_dict": {**{f"visual.{k}": v for k, v in src.items()}, "logit_scale": torch.ones(())}}, full)
    for path in (tower, full):
        torch.manual_seed(6)
        enc = build_item_encoder(cfg("clip_rn50", encoder_pretrained=True, encoder_weights=str(path)), 16)
        loaded = enc.backbone.net.state_dict()
        assert loaded.keys() == src.keys() and all(torch.equal(src[k], loaded[k]) for k in src), path


@pytest.mark.parametrize("name", ["swin_t", "clip_vit_b32"])
def test_a_missing_weights_file_names_the_path_and_the_key(tmp_path, name):
    path = str(tmp_path / "nowhere" / "weights.safetensors")
    with pytest.raises(ValueError, match="encoder_weights") as err:
        meta(name, encoder_pretrained=True, encoder_weights=path)
    assert path in str(err.value)


def test_a_wrong_weights_file_says_it_does_not_fit(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(ConfigError, match="does not fit clip_rn50"):
        build_item_encoder(cfg("clip_rn50", encoder_pretrained=True, encoder_weights=str(path)), 16)


def test_offline_hub_failure_asks_for_a_local_file(monkeypatch):
    import open_clip
    import timm

    def offline(*args, **kwargs):
        raise OSError("no connection")
    monkeypatch.setattr(timm, "create_model", offline)
    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    for name in ("beit_b", "clip_rn50"):
        with pytest.raises(ConfigError, match="set encoder_weights"):
            build_item_encoder(cfg(name, encoder_pretrained=True), 16)


def test_pretrained_on_the_meta_device_reads_nothing(monkeypatch):
    import open_clip
    monkeypatch.setattr(open_clip, "download_pretrained", lambda *a, **k: pytest.fail("downloaded"))
    assert meta("clip_rn50", encoder_pretrained=True).total_parameters() == meta("clip_rn50").total_parameters()


# --------------------------------------------------------------------------------------------------- errors
def test_an_unknown_encoder_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        meta("clip_rn51")
    assert all(n in str(err.value) for n in NINE) and "timm/<name>" in str(err.value)
    with pytest.raises(ConfigError, match="timm has no model"):
        meta("timm/resnet_51x")


def test_too_many_trainable_blocks_is_an_error_naming_key_value_and_blocks():
    with pytest.raises(ConfigError, match=r"encoder_trainable_blocks.*13 .*clip_vit_b32.* 12 blocks"):
        meta("clip_vit_b32", encoder_trainable_blocks=13)
    with pytest.raises(ConfigError, match="encoder_trainable_blocks"):
        meta("swin_t", encoder_trainable_blocks=-2)


def test_config_errors_name_the_source():
    from REC.app.configure import build_config
    config = build_config(["PixelNet/sasrec.yaml", "overall/ViT.yaml"],
                          ["--encoder_pretrained=false", "--encoder_trainable_blocks=99"])
    with pytest.raises(ConfigError, match="command line: key 'encoder_trainable_blocks': 99"), torch.device("meta"):
        build_item_encoder(config, 8)


def test_unsupported_readout_and_missing_encoder():
    with pytest.raises(ConfigError, match="beit_b supports readouts \\['pool'\\]"):
        meta("beit_b", encoder_readout="cls")
    with pytest.raises(ConfigError, match="needs an image encoder"):
        meta(None)


# ------------------------------------------------------------------------------------------- timm/<any model>
def test_any_timm_model_trains_whole():
    enc = build_item_encoder(cfg("timm/test_resnet"), 8)
    assert enc(torch.randn(2, 3, 64, 64)).shape == (2, 8) and enc.is_convolutional
    assert enc.trainable_parameters() == enc.total_parameters()
    with pytest.raises(ConfigError, match="only -1 or null"):
        build_item_encoder(cfg("timm/test_resnet", encoder_trainable_blocks=2), 8)


def test_the_table_lists_every_encoder(capsys):
    from REC.model.encoders.__main__ import main
    main(["512"])
    out = capsys.readouterr().out
    assert all(f"| {n} " in out for n in NINE) and "14,569,472" in out  # ViT-B/32: 2 resblocks + 768x512 head
