"""Detection models and the checks around them: pixels in whole attention windows with at least as many patches as
a two-stage detector's queries (a windowed ViT backbone), the coverage benchmark's config rules for detectors
(one feature level where the default config has none; a backbone's reported widths tied to its stage widths; a field
the config derives its width from, shrunk with it), its float64 re-measurement where float32 rounding is amplified
past the exactness threshold, and the probe telling an op that returns its input unchanged (eval dropout) from an
in-place one (an ``inplace=True`` dropout, a no-op in eval, still writes into z in training). Tiny configs;
penalized gradients against the explicit-penalty oracle (`tests/_oracle.py`)."""
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers as T
from _models import perturbed
from _oracle import grads, rel_err
from test_probe_inputs import TAU, _check
from torch import nn

import hf_penal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import coverage  # noqa: E402


def test_a_windowed_detector_backbone_gets_pixels_in_whole_windows_with_a_patch_per_query():
    """RF-DETR: 70 px at patch 14 is 5 patches a side, which 3 windows a side do not split (nor 224 px); the late
    candidate is 84 px (6 patches: 2 per window), grown by whole windows to 126 px (81 patches) for 40 queries."""
    bb = T.RfDetrDinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=70,
                              patch_size=14, num_windows=3, out_indices=[1, 2], window_block_indexes=[0])
    cfg = T.RfDetrConfig(backbone_config=bb, d_model=32, decoder_layers=1, decoder_self_attention_heads=2,
                         decoder_cross_attention_heads=2, decoder_ffn_dim=64, intermediate_size=64, num_queries=40,
                         group_detr=2)
    kwargs = _check(T.RfDetrModel(cfg), None)
    assert kwargs["pixel_values"].shape == (2, 3, 126, 126)


def test_a_detector_default_config_without_feature_levels_gets_one_and_runs_at_the_small_config():
    """LW-DETR's default config has no projector scale (num_feature_levels 0: nothing to concatenate); the
    benchmark gives it one level at scale 1.0, and the small config's 256 px images are grown for its 300 queries."""
    assert coverage._one_feature_level(T.AutoConfig.for_model("lw_detr")) == {"projector_scale_factors": [1.0]}
    assert coverage._one_feature_level(T.AutoConfig.for_model("rf_detr")) == {}
    model = coverage.build_transformers("lw_detr", "small")
    assert model.config.num_feature_levels == 1
    kwargs = _check(model, None)
    assert kwargs["pixel_values"].shape[-1] ** 2 // 16 ** 2 >= model.config.num_queries


def test_a_backbone_reports_the_widths_its_stages_output():
    """HGNetV2 (D-FINE's backbone) reports hidden_sizes to D-FINE's input projections but builds its stages from
    stage_out_channels, which the benchmark does not shrink: the two stay equal."""
    cfg = T.AutoConfig.for_model("d_fine")
    coverage._shrink(cfg)
    bb = cfg.backbone_config
    assert list(bb.hidden_sizes) == list(bb.stage_out_channels)
    assert list(cfg.encoder_in_channels) == [bb.stage_out_channels[i - 1] for i in bb.out_indices]


def test_a_field_the_config_derives_its_width_from_shrinks_with_it():
    """LightGlue sets hidden_size = descriptor_dim in its __init__: descriptor_dim shrinks to the small width."""
    model = coverage.build_transformers("lightglue", "small")
    assert model.config.descriptor_dim == model.config.hidden_size == 32


class NormedBlock(nn.Module):
    """x + BN(lin(x)) with the BatchNorm in training mode: the penalty on a batch-normalized branch output has almost
    no gradient upstream, so float32 leaves only rounding residue there, amplified by 1 / (batch deviation)."""

    def __init__(self, width: int):
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.norm = nn.BatchNorm1d(width, affine=False)

    def forward(self, x):
        return x + self.norm(self.lin(x))


class NormedNet(nn.Module):
    def __init__(self, width: int = 16, depth: int = 2):
        super().__init__()
        self.layers = nn.ModuleList([NormedBlock(width) for _ in range(depth)])
        self.head = nn.Linear(width, 4)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def test_a_comparison_that_float32_rounding_cannot_resolve_is_remeasured_in_float64():
    torch.manual_seed(0)
    model, x = NormedNet(), torch.randn(8, 16)
    rec = coverage.check(model, [((x,), {})], [((x,), {})])
    assert rec["f32_noise"] > 1e-5 and rec["f32_rel_err"] >= 1e-4  # float32 cannot tell
    assert rec["precision"] == "float64" and rec["rel_err"] < 1e-4 and rec["status"] == "ok"


class DropoutBlock(nn.Module):
    """x + dropout(attn(x)): in eval, functional dropout returns its input itself, which is no in-place write."""

    def __init__(self, width: int):
        super().__init__()
        self.attn = nn.Linear(width, width)

    def forward(self, x):
        return x + F.dropout(self.attn(x), 0.1, self.training)


class DropoutNet(nn.Module):
    def __init__(self, width: int = 8, depth: int = 2):
        super().__init__()
        self.layers = nn.ModuleList([DropoutBlock(width) for _ in range(depth)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def _attn_sites_exact(model, x):
    """Penalized (probe on `x`) training gradients = the oracle's with the ``layers.N.attn`` outputs penalized."""
    penal = hf_penal.apply(copy.deepcopy(model), tau=TAU, example_inputs=x)

    def loss(m):
        torch.manual_seed(0)
        return m(x).square().mean()
    g_plain, _, _ = grads(model, loss)
    g_oracle, _, _ = grads(model, loss, [(r"layers\.\d\.attn", None)], TAU)
    g_penal, _, _ = grads(penal, loss)
    assert rel_err(g_oracle, g_plain) > 1e-5 and rel_err(g_penal, g_oracle) < 1e-5


def test_an_op_returning_its_input_unchanged_does_not_make_the_site_in_place():
    torch.manual_seed(0)
    model, x = perturbed(DropoutNet()), torch.randn(2, 4, 8)
    found = hf_penal.sites(model, x)
    assert [s.name for s in found] == ["layers.0.attn", "layers.1.attn"] and not any(s.inplace for s in found)
    _attn_sites_exact(model, x)


class InplaceDropoutBlock(DropoutBlock):
    """x + in-place dropout(attn(x)): a no-op in eval (where the probe runs), a write into z in training."""

    def forward(self, x):
        return x + F.dropout(self.attn(x), 0.5, self.training, inplace=True)


def test_an_in_place_dropout_still_makes_the_site_in_place_and_training_gradients_exact():
    torch.manual_seed(0)
    model, x = perturbed(DropoutNet()), torch.randn(2, 4, 8)
    model.layers = nn.ModuleList([InplaceDropoutBlock(8) for _ in range(2)])
    perturbed(model)
    found = hf_penal.sites(model, x)
    assert [s.name for s in found] == ["layers.0.attn", "layers.1.attn"] and all(s.inplace for s in found)
    _attn_sites_exact(model, x)
