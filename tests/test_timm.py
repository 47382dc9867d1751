"""timm integration: create_model(..., penal=...), gradients against the explicit-penalty oracle per family,
eval bit-identity, local checkpoints, exact remove, the transformers timm wrapper."""
import pytest
import torch

timm = pytest.importorskip("timm")

from _oracle import grads, rel_err  # noqa: E402

import hf_penal  # noqa: E402

TAU = 1e-2
# name -> (create kwargs, image size, oracle z modules, expected kinds)
FAMILIES = {
    "resnet18": (dict(zero_init_last=False), 32, [(r"layer\d\.\d+\.bn2", None)], {"conv": 8}),
    "resnet34": (dict(zero_init_last=False), 32, [(r"layer\d\.\d+\.bn2", None)], {"conv": 16}),
    "resnet50": (dict(zero_init_last=False), 32, [(r"layer\d\.\d+\.bn3", None)], {"conv": 16}),
    "vit_tiny_patch16_224": (dict(img_size=32, patch_size=8), 32, [(r"blocks\.\d+\.drop_path[12]", None)],
                             {"attention": 12, "mlp": 12}),
    "vit_small_patch16_224": (dict(img_size=32, patch_size=8, depth=4, init_values=0.3), 32,
                              [(r"blocks\.\d+\.drop_path[12]", None)], {"attention": 4, "mlp": 4}),
    "convnext_atto": (dict(ls_init_value=0.5), 32, [(r"stages\.\d\.blocks\.\d+\.drop_path", None)], {"conv": 12}),
}


def _checkpoint(name, kw, tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(0)
    src = timm.create_model(name, pretrained=False, num_classes=5, **kw)
    path = str(tmp_path / f"{name}.safetensors")
    save_file(src.state_dict(), path)
    return path


def _load(name, kw, path, **penal):
    return timm.create_model(name, pretrained=True, num_classes=5,
                             pretrained_cfg_overlay=dict(file=path, num_classes=5), **kw, **penal)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_gradients_equal_oracle_and_eval_is_bit_identical(name, tmp_path):
    kw, size, zspec, kinds = FAMILIES[name]
    path = _checkpoint(name, kw, tmp_path)
    vanilla = _load(name, kw, path)
    model = _load(name, kw, path, penal=True, penal_tau=TAU)
    found = hf_penal.sites(model)
    counts = {}
    for s in found:
        counts[s.kind] = counts.get(s.kind, 0) + 1
    assert counts == kinds
    assert model.pretrained_cfg["penal"]["tau"] == TAU
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 3, size, size, generator=g), torch.tensor([1, 3])
    vanilla.eval(), model.eval()  # before any train step changes BatchNorm running stats
    with torch.no_grad():
        assert torch.equal(vanilla(x), model(x))

    def loss(m):
        return torch.nn.functional.cross_entropy(m(x), y)

    g_plain, l_plain, _ = grads(vanilla, loss)
    g_oracle, _, fired = grads(vanilla, loss, zspec, TAU)
    assert fired == len(found)
    g_penal, l_penal, _ = grads(model, loss)
    assert torch.allclose(l_penal, l_plain, rtol=1e-6, atol=0)
    assert rel_err(g_oracle, g_plain) > 1e-3  # 100x the tolerance below: a no-op cannot pass
    assert rel_err(g_penal, g_oracle) < 1e-5


def test_checkpoint_path_and_remove_round_trip(tmp_path):
    kw, size, _, _ = FAMILIES["resnet18"]
    path = _checkpoint("resnet18", kw, tmp_path)
    model = timm.create_model("resnet18", num_classes=5, checkpoint_path=path, penal={"tau": TAU}, **kw)
    plain = timm.create_model("resnet18", num_classes=5, checkpoint_path=path, **kw)
    assert len(hf_penal.sites(model)) == 8 and not hasattr(plain, "_hf_penal")
    assert model.state_dict().keys() == plain.state_dict().keys()
    hf_penal.remove(model)
    assert repr(model) == repr(plain) and "penal" not in model.pretrained_cfg
    x = torch.randn(2, 3, size, size)
    loss = lambda m: m(x).logsumexp(-1).sum()  # noqa: E731
    assert rel_err(grads(model, loss)[0], grads(plain, loss)[0]) == 0.0


def test_without_penal_create_model_is_unchanged():
    torch.manual_seed(0)
    a = timm.create_model("resnet18", num_classes=3)
    assert not any(isinstance(m, hf_penal.PenalConnection) for m in a.modules())
    assert "penal" not in a.pretrained_cfg


def test_drop_path_is_kept_and_the_penalty_applies_to_what_enters_the_add(tmp_path):
    """With stochastic depth the branch output entering the add is drop_path(ls(f(x))): that is z."""
    kw = dict(img_size=32, patch_size=8, depth=2, drop_path_rate=0.5)
    path = _checkpoint("vit_tiny_patch16_224", kw, tmp_path)
    vanilla = _load("vit_tiny_patch16_224", kw, path)
    model = _load("vit_tiny_patch16_224", kw, path, penal_tau=TAU)
    x = torch.randn(4, 3, 32, 32)
    loss = lambda m: m(x).square().mean()  # noqa: E731
    torch.manual_seed(5)
    g_oracle, _, _ = grads(vanilla, loss, [(r"blocks\.\d+\.drop_path[12]", None)], TAU)
    torch.manual_seed(5)
    g_penal, _, _ = grads(model, loss)
    assert rel_err(g_penal, g_oracle) < 1e-5


def test_a_timm_family_without_residual_adds_raises_clearly():
    model = timm.create_model("vgg11", pretrained=False, num_classes=3)
    with pytest.raises(hf_penal.NoResidualSiteError, match="sites="):
        hf_penal.apply(model, example_inputs=torch.randn(1, 3, 32, 32))
    assert not any(isinstance(m, hf_penal.PenalConnection) for m in model.modules())


def test_transformers_timm_wrapper_gets_the_same_sites(tmp_path):
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "TimmWrapperForImageClassification"):
        pytest.skip("installed transformers has no TimmWrapperForImageClassification")
    cfg = transformers.TimmWrapperConfig(architecture="resnet18", model_args=dict(zero_init_last=False))
    cfg.num_labels = 5
    torch.manual_seed(0)
    transformers.TimmWrapperForImageClassification(cfg).save_pretrained(tmp_path / "w")
    wrapped = transformers.TimmWrapperForImageClassification.from_pretrained(tmp_path / "w", penal_tau=TAU)
    bare = hf_penal.apply(timm.create_model("resnet18", num_classes=5), tau=TAU)
    assert [(s.name.split("timm_model.", 1)[-1], s.kind) for s in hf_penal.sites(wrapped)] == \
        [(s.name, s.kind) for s in hf_penal.sites(bare)]
    x = torch.randn(2, 3, 32, 32)
    vanilla = transformers.TimmWrapperForImageClassification.from_pretrained(tmp_path / "w")
    loss = lambda m: m(pixel_values=x).logits.square().mean()  # noqa: E731
    g_oracle, _, _ = grads(vanilla, loss, [(r"timm_model\.layer\d\.\d+\.bn2", None)], TAU)
    assert rel_err(grads(wrapped, loss)[0], g_oracle) < 1e-5
