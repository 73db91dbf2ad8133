"""The paper's architectures by their timm names: the preprocessing each set of weights expects,
the layers ``fixres adapt`` finds in each, and the FLOPs counter (all offline, on the meta device)."""
import pytest
import timm
import torch

from fixres.adapt import find_adaptable_layers, make_plan
from fixres.core.errors import FixresError
from fixres.data.preprocessing import Preprocessing
from fixres.experiments.grid.config import train_config
from fixres.experiments.transfer import RESNEXT_WSL, check_tagged
from fixres.measure.costs import count_flops, model_flops
from fixres.models import create_model
from fixres.train.loop import train_preprocessing

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
INCEPTION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))     # AdvProp and PNASNet weights were trained with these
EFFNET_CROP = {0: 0.875, 1: 0.882, 2: 0.89, 3: 0.904, 4: 0.922, 5: 0.934, 6: 0.942, 7: 0.949, 8: 0.954}
EFFNET_SIZE = {0: 224, 1: 240, 2: 260, 3: 300, 4: 380, 5: 456, 6: 528, 7: 600, 8: 672}

# name -> (mean/std, crop_pct, interpolation, training input size). One weights tag per kind of
# preprocessing the paper's models use (the whole tables are timm's, tested by timm): fixres must
# read each kind from the tag, whatever the defaults.
EXPECTED = {
    "resnet50.tv_in1k": (IMAGENET, 0.875, "bilinear", 224),          # the torchvision weights the paper used
    "resnet50.a1_in1k": (IMAGENET, 0.95, "bicubic", 224),
    "pnasnet5large.tf_in1k": (INCEPTION, 0.911, "bicubic", 331),
    "tf_efficientnet_b3.ap_in1k": (INCEPTION, EFFNET_CROP[3], "bicubic", EFFNET_SIZE[3]),
    "tf_efficientnet_b7.ns_jft_in1k": (IMAGENET, EFFNET_CROP[7], "bicubic", EFFNET_SIZE[7]),
}

# architecture -> (classifier, batch-norm(s) before the global pooling) found by fixres adapt
LAYERS = {
    "resnet50": ("fc", ("layer4.2.bn3",)),
    "resnext101_32x48d": ("fc", ("layer4.2.bn3",)),
    "pnasnet5large": ("last_linear", ("cell_11.conv_1x1.bn", "cell_11.comb_iter_0_left.bn_sep_2",
                                      "cell_11.comb_iter_1_left.bn_sep_2", "cell_11.comb_iter_2_left.bn_sep_2",
                                      "cell_11.comb_iter_2_right.bn_sep_2", "cell_11.comb_iter_3_left.bn_sep_2",
                                      "cell_11.comb_iter_4_left.bn_sep_2")),
    "tf_efficientnet_b0": ("classifier", ("bn2",)),   # b1-b8 scale the same blocks: the same discovery
}


def meta_model(name: str, **kwargs):
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preprocessing_follows_the_weights_tag(name):
    (mean, std), crop_pct, interpolation, size = EXPECTED[name]
    model = meta_model(name)
    prep = Preprocessing.from_pretrained_cfg(model.pretrained_cfg, name, sizes=False)   # at the training size
    assert prep.mean == pytest.approx(mean) and prep.std == pytest.approx(std)
    assert prep.crop_pct == pytest.approx(crop_pct)
    assert prep.interpolation == interpolation
    assert Preprocessing.from_pretrained_cfg(model.pretrained_cfg, name).train_res == size
    assert model.pretrained_cfg["input_size"] == (3, size, size)


def test_a_new_classifier_keeps_the_tags_preprocessing():
    """fixres builds models with its own number of classes: the tag's normalisation must survive it."""
    model = create_model("tf_efficientnet_b0.ap_in1k", 3)
    assert model.get_classifier().out_features == 3
    assert Preprocessing.from_pretrained_cfg(model.pretrained_cfg, "b0").mean == INCEPTION[0]


def test_runs_from_weights_take_crop_and_interpolation_from_the_tag():
    """fixres train --pretrained / --weights (and grid and transfer, which build its config) take the
    tag's crop_pct and interpolation unless given; a run from scratch takes fixres's defaults."""
    declared = Preprocessing.from_pretrained_cfg(meta_model("tf_efficientnet_b3.ap_in1k").pretrained_cfg, "b3",
                                                 sizes=False)

    def run_prep(section, **kw):
        cfg = train_config(section, model="tf_efficientnet_b3.ap_in1k", train_res=300, out="o", data="d", **kw)
        return train_preprocessing(cfg, declared)

    prep = run_prep({}, weights="w.pt")
    assert (prep.crop_pct, prep.interpolation) == (0.904, "bicubic")
    assert run_prep({}, pretrained=True).crop_pct == 0.904
    assert run_prep({"crop_pct": 0.875}, weights="w.pt").crop_pct == 0.875
    scratch = run_prep({})
    assert (scratch.crop_pct, scratch.interpolation) == (0.875, "bilinear")    # fixres train's defaults


def test_untagged_name_with_local_weights_is_refused_when_tags_disagree():
    with pytest.raises(FixresError, match="ap_in1k"):
        check_tagged("tf_efficientnet_b0")
    check_tagged("tf_efficientnet_b0.ap_in1k")
    check_tagged("resnet50")           # every resnet50 tag uses ImageNet's mean/std


@pytest.mark.parametrize("arch", sorted(LAYERS))
def test_adaptable_layers_of_the_paper_architectures(arch):
    classifier, bns = LAYERS[arch]
    model = meta_model(arch, num_classes=7)
    assert find_adaptable_layers(model) == (classifier, bns)
    plan = make_plan(model, "fixres")
    assert plan.classifier == classifier and plan.batch_norms == bns
    if arch == "pnasnet5large":       # the paper's recipe: the last three cells train too
        assert {"cell_9", "cell_10", "cell_11"} <= set(plan.trainable)


def test_resnext101_32x48d_is_the_papers_829m_parameter_model():
    assert timm.is_model(RESNEXT_WSL)
    model = meta_model(RESNEXT_WSL)
    params = sum(p.numel() for p in model.parameters())
    assert params == pytest.approx(829e6, rel=0.002)
    assert model.pretrained_cfg["tag"] == "fb_wsl_ig1b_ft_in1k"
    assert model.pretrained_cfg["license"] == "cc-by-nc-4.0"
    # 153 billion multiply-adds at 224 px (Mahajan et al. 2018)
    assert count_flops(model, 224) / 2 == pytest.approx(153e9, rel=0.01)


def test_flops_per_image():
    flops = model_flops("resnet50", 1000, [128, 224])
    assert flops[224] / 2 == pytest.approx(4.1e9, rel=0.01)       # ResNet-50: 4.1 GMACs at 224 px
    assert flops[128] / flops[224] == pytest.approx((128 / 224) ** 2, rel=0.03)   # METHOD.md: 0.33x
    with pytest.raises(FixresError):
        model_flops("no_such_model_xyz", 10, [32])


def _vit_flops(model, res):
    """An independent count of a ViT's FLOPs (2 per multiply-add): patch embedding, per block the
    qkv / projection / MLP products and the two attention products (QK^T, AV), the head."""
    patch = model.patch_embed.patch_size[0]
    d, tokens = model.embed_dim, (res // patch) ** 2 + model.num_prefix_tokens
    block = model.blocks[0]
    hidden = block.mlp.fc1.out_features
    per_block = 2 * tokens * d * (3 * d + d + 2 * hidden) + 2 * 2 * tokens * tokens * d
    embed = 2 * (tokens - model.num_prefix_tokens) * 3 * patch * patch * d
    return embed + len(model.blocks) * per_block + 2 * d * model.num_classes


@pytest.mark.parametrize("res", [224, 160])
def test_attention_flops_are_counted_on_the_meta_device_and_on_the_real_model(res):
    """The real-model fallback (architectures that cannot run on `meta`) must count attention as
    the meta count does, whatever kernel runs it (the fused CPU kernel hides its products)."""
    name = "vit_small_patch16_224"
    expected = _vit_flops(meta_model(name, num_classes=1000), res)
    assert model_flops(name, 1000, [res])[res] == expected
    real = timm.create_model(name, num_classes=1000, dynamic_img_size=True)
    assert count_flops(real, res) == expected
