"""Layer discovery on randomly initialised timm models (offline), freezing and modes, graph split."""
import pytest
import timm
import torch

from fixres.adapt import find_adaptable_layers, make_plan, pooled_features
from fixres.adapt.graph import check_split, split_graph
from fixres.adapt.surgery import freeze_for, set_modes
from fixres.core.errors import FixresError

PNAS_FINAL = ("cell_11.conv_1x1.bn", "cell_11.comb_iter_0_left.bn_sep_2", "cell_11.comb_iter_1_left.bn_sep_2",
              "cell_11.comb_iter_2_left.bn_sep_2", "cell_11.comb_iter_2_right.bn_sep_2",
              "cell_11.comb_iter_3_left.bn_sep_2", "cell_11.comb_iter_4_left.bn_sep_2")

# model -> (classifier, batch-norm(s) before the pooling). Discovery runs on the meta device:
# no memory, no weights, a few hundred milliseconds even for PNASNet-5-Large.
DISCOVERY = {
    "resnet18": ("fc", ("layer4.1.bn2",)),                     # identity shortcut: the last bn alone
    "test_resnet": ("fc", ("layer4.0.bn2", "layer4.0.downsample.2")),   # projection shortcut: both summed
    "resnet10t": ("fc", ("layer4.0.bn2", "layer4.0.downsample.2")),
    "resnext26ts": ("head.fc", ("stages.3.1.conv3_1x1.bn",)),
    "efficientnet_b0": ("classifier", ("bn2",)),
    "test_efficientnet": ("classifier", ("bn2",)),
    "regnetx_002": ("head.fc", ("s4.b7.conv3.bn",)),
    "mobilenetv3_small_050": ("classifier", ("blocks.5.0.bn1",)),  # conv_head after the pooling has no bn
    "pnasnet5large": ("last_linear", PNAS_FINAL),
    "test_convnext": ("head.fc", ()),                             # LayerNorm only
    # hybrids: batch-norms in the convolutional stages, a LayerNorm last (adapted instead: see below)
    "coatnet_0_rw_224": ("head.fc", ()),
    "maxvit_tiny_tf_224": ("head.fc", ()),
    "coatnet_bn_0_rw_224": ("head.fc", ("norm",)),                 # the same hybrid with a final batch-norm
}


def _last_norm_called(model, classifier):
    """The reference: the last module whose class name says it normalises, called before the
    classifier (forward hooks, independent of fixres's discovery)."""
    calls = []
    handles = [m.register_forward_hook(lambda mod, a, o, n=n: calls.append(n)) for n, m in model.named_modules()
               if "Norm" in type(m).__name__ or n == classifier]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 224, 224, device="meta"))
    for h in handles:
        h.remove()
    return [n for n in calls[:calls.index(classifier)] if "Norm" in type(model.get_submodule(n)).__name__][-1]


@pytest.mark.parametrize("name", ["coatnet_0_rw_224", "maxvit_tiny_tf_224"])
def test_a_hybrid_adapts_its_last_normalisation_not_an_earlier_batch_norm(name):
    """CoAtNet and MaxViT: batch-norms in the conv stages, a LayerNorm before the head. The paper
    adapts the last normalisation before the pooling: that LayerNorm's gamma/beta train."""
    model = meta_model(name)
    last = _last_norm_called(model, "head.fc")
    assert last == {"coatnet_0_rw_224": "norm", "maxvit_tiny_tf_224": "head.norm"}[name]
    plan = make_plan(model, "fixres")
    assert plan.norms == (last,) and plan.trainable == ("head.fc", last)
    assert plan.batch_norms == () and plan.train_mode == ()
    assert "batch-norms come before" in plan.notes[0]
    with pytest.raises(FixresError, match=f"{last}.*no running statistics.*--all-bn"):
        make_plan(model, "bn")
    assert make_plan(model, "bn", all_bn=True).batch_norms     # every batch-norm, when asked


def meta_model(name):
    with torch.device("meta"):
        return timm.create_model(name, num_classes=5)


@pytest.mark.parametrize("name", sorted(DISCOVERY))
def test_discovery_table(name):
    assert find_adaptable_layers(meta_model(name)) == DISCOVERY[name]


def test_paper_exception_and_no_batch_norm_notes():
    plan = make_plan(meta_model("pnasnet5large"), "fixres")
    assert plan.trainable == ("last_linear", "cell_9", "cell_10", "cell_11")
    assert {"cell_9", "cell_10", "cell_11"} <= set(plan.train_mode) and "cell_9" in plan.notes[0]
    convnext = meta_model("test_convnext")     # no batch-norm: the LayerNorm before the head is its analogue
    plan = make_plan(convnext, "fixres")
    assert plan.trainable == ("head.fc", "head.norm") and plan.norms == ("head.norm",) and plan.train_mode == ()
    assert "no batch-norm" in plan.notes[0] and "head.norm" in plan.notes[0]
    with pytest.raises(FixresError, match="no batch-norm.*--method fixres"):
        make_plan(convnext, "bn")


def test_overrides_and_their_errors():
    model = meta_model("resnet18")
    found = find_adaptable_layers(model, bn_module=("layer3.1.bn2",), classifier_module="fc")
    assert found == ("fc", ("layer3.1.bn2",))
    for kwargs, message in [({"bn_module": ("layer9",)}, "no such module"),
                            ({"bn_module": ("layer4",)}, "not a batch-norm"),
                            ({"classifier_module": "nope"}, "no such module"),
                            ({"classifier_module": "global_pool"}, "no parameters")]:
        with pytest.raises(FixresError, match=message):
            find_adaptable_layers(model, **kwargs)
    with pytest.raises(FixresError, match="unknown adaptation method"):
        make_plan(model, "magic")


def test_freezing_sets_parameters_and_modes_as_the_plan_says():
    model = timm.create_model("test_resnet", num_classes=3)
    plan = make_plan(model, "fixres")
    trainable = freeze_for(model, plan)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"fc.weight", "fc.bias"} and len(trainable) == 2
    set_modes(model, plan)
    assert {n for n, m in model.named_modules() if m.training} == {"layer4.0.bn2", "layer4.0.downsample.2"}
    affine = make_plan(model, "fixres", train_bn_affine=True)
    freeze_for(model, affine)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "fc.weight", "fc.bias", "layer4.0.bn2.weight", "layer4.0.bn2.bias",
        "layer4.0.downsample.2.weight", "layer4.0.downsample.2.bias"}
    head = make_plan(model, "head")
    set_modes(model, head)
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("name", ["test_efficientnet", "test_convnext"])
def test_split_top_of_bottom_is_the_model(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=4).eval()
    split, why = split_graph(model, make_plan(model, "fixres").adapted)
    assert why == "" and split.crossing
    x = torch.randn(2, 3, 48, 48)
    assert check_split(model, split, x) == ""
    with torch.no_grad():
        assert torch.equal(split.top(*split.bottom(x)), model(x))
    classifier = find_adaptable_layers(model)[0]
    top_weight = split.top.get_submodule(classifier).weight
    assert top_weight is model.get_submodule(classifier).weight   # shared, not copied


def test_pooled_features_are_the_classifier_input():
    model = timm.create_model("test_resnet", num_classes=3).eval()
    x = torch.randn(2, 3, 40, 40)
    feats = pooled_features(model, x)
    with torch.no_grad():
        assert feats.shape == (2, model.num_features)
        assert torch.allclose(model.fc(feats), model(x), atol=1e-6)


def test_pnasnet_split_caches_the_two_inputs_of_cell_9():
    model = meta_model("pnasnet5large")
    split, why = split_graph(model, make_plan(model, "fixres").adapted)
    assert why == "" and len(split.crossing) == 2      # a PNASNet cell reads the two previous cells' outputs
    top = {n.target for n in split.top.graph.nodes if n.op == "call_module"}
    bottom = {n.target for n in split.bottom.graph.nodes if n.op == "call_module"}
    assert {"cell_9", "cell_10", "cell_11", "last_linear"} <= top and any(t.startswith("cell_8.") for t in bottom)
    assert top.isdisjoint(bottom)
