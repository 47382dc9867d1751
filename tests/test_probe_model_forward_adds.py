"""Residual adds that are not inside a numbered layer. XLM and Flaubert keep their branches in ModuleLists
(``attentions``, ``ffns``) and add them in the model's own forward (``x = x + attentions[i](x)``); RegNet-V and
FLAVA's image codebook name their blocks ``s1.b2`` / ``group_1.block_2``. The probe finds them as sites, one layer per
index, and the penalty equals the explicit-penalty oracle; an FPN's sum of a lateral conv and the upsampled coarser
level, also a numbered module's output added in an unnumbered forward, is not a branch."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import transformers
from _models import perturbed
from _oracle import grads, rel_err
from torch import nn

import hf_penal

TAU = 0.3


def _oracle_check(vanilla, call, loss, expected):
    """`expected` are the sites the probe finds; the penal model's gradients equal the oracle's on them."""
    found = hf_penal.sites(vanilla, call)
    assert [s.name for s in found] == expected
    penal = hf_penal.apply(copy.deepcopy(vanilla), tau=TAU, example_inputs=call)
    want, _, n = grads(vanilla, loss, [(s, None if "attentions" not in s else 0) for s in expected], tau=TAU)
    got, _, _ = grads(penal, loss)
    assert n == len(expected)
    assert rel_err(got, want) < 1e-5
    return found


@pytest.mark.parametrize("cls", [transformers.XLMConfig, transformers.FlaubertConfig])
def test_branches_in_module_lists_added_in_the_model_forward_are_sites(cls):
    torch.manual_seed(0)
    cfg = cls(vocab_size=50, emb_dim=16, n_layers=2, n_heads=2, dropout=0.0, attention_dropout=0.0)
    model = perturbed(transformers.AutoModel.from_config(cfg))
    ids = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(1))
    call = ((), {"input_ids": ids})
    expected = [f"{b}.{i}" for b in ("attentions", "ffns") for i in range(2)]
    found = _oracle_check(model, call, lambda m: m(input_ids=ids).last_hidden_state.square().mean(), expected)
    # one layer per list index, in model order, with the kinds of their lists
    assert {s.name: (s.layer, s.depth, s.n_layers, s.kind) for s in found} == {
        f"{b}.{i}": (str(i), i, 2, k) for b, k in (("attentions", "attention"), ("ffns", "mlp")) for i in range(2)}


class _PreNormLists(nn.Module):
    """Flaubert's ``pre_norm=True`` path (broken in transformers 5.23: it indexes its cache object): the branch's input
    is a numbered norm of the stream, ``x = x + mlps[i](norms[i](x))``."""

    def __init__(self, w=8, n=3):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(w) for _ in range(n))
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(w, 2 * w), nn.GELU(), nn.Linear(2 * w, w)) for _ in range(n))

    def forward(self, x):
        for norm, mlp in zip(self.norms, self.mlps):
            x = x + mlp(norm(x))
        return x


def test_pre_norm_branches_in_module_lists_are_sites():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    found = _oracle_check(perturbed(_PreNormLists()), x, lambda m: m(x).square().mean(),
                          ["mlps.0", "mlps.1", "mlps.2"])
    assert [(s.layer, s.depth, s.n_layers) for s in found] == [("0", 0, 3), ("1", 1, 3), ("2", 2, 3)]


class _FPN(nn.Module):
    """Top-down merges: lateral_i(feature_i) + upsample(coarser); then the same stream through numbered heads."""

    def __init__(self, w=8):
        super().__init__()
        self.down = nn.ModuleList(nn.Conv2d(3 if i == 0 else w, w, 3, stride=2, padding=1) for i in range(3))
        self.lateral = nn.ModuleList(nn.Conv2d(w, w, 1) for _ in range(3))

    def forward(self, x):
        feats = []
        for conv in self.down:
            x = conv(x)
            feats.append(x)
        out = self.lateral[2](feats[2])
        for i in (1, 0):
            coarser = F.interpolate(out, scale_factor=2.0)  # exists before the lateral conv starts
            out = coarser + self.lateral[i](feats[i])
        return out


def test_an_fpn_merge_of_sibling_levels_is_not_a_site():
    assert hf_penal.sites(_FPN(), torch.randn(1, 3, 16, 16)) == []
    with pytest.raises(hf_penal.NoResidualSiteError):
        hf_penal.apply(_FPN(), tau=TAU, example_inputs=torch.randn(1, 3, 16, 16))


class _Block(nn.Module):
    def __init__(self, w=8):
        super().__init__()
        self.norm = nn.BatchNorm2d(w)
        self.conv = nn.Conv2d(w, w, 3, padding=1)

    def forward(self, x):
        return x + self.conv(torch.relu(self.norm(x)))


class _Stage(nn.Module):
    def __init__(self, w=8):
        super().__init__()
        self.b1, self.b2 = _Block(w), _Block(w)

    def forward(self, x):
        return self.b2(self.b1(x))


class _NamedBlocks(nn.Module):
    """RegNet-V's naming: stages ``s1``, ``s2`` of blocks ``b1``, ``b2`` (attributes, not list entries)."""

    def __init__(self, w=8):
        super().__init__()
        self.stem = nn.Conv2d(3, w, 3, padding=1)
        self.s1, self.s2 = _Stage(w), _Stage(w)

    def forward(self, x):
        return self.s2(self.s1(self.stem(x)))


def test_blocks_named_with_their_number_are_layers():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    expected = [f"s{i}.b{j}.conv" for i in (1, 2) for j in (1, 2)]
    found = _oracle_check(perturbed(_NamedBlocks()), x, lambda m: m(x).square().mean(), expected)
    assert [s.depth for s in found] == [0, 1, 2, 3]


class _SelfResidualAttention(nn.Module):
    """BLT's cross-attention: it returns x + o(x), with its own residual inside."""

    def __init__(self, w=8):
        super().__init__()
        self.norm, self.o = nn.LayerNorm(w), nn.Linear(w, w)

    def forward(self, x):
        return x + self.o(self.norm(x))


class _AddsItAgain(nn.Module):
    """BLT's local encoder adds that output to x again: x + (x + o)."""

    def __init__(self, w=8, n=2):
        super().__init__()
        self.cross = nn.ModuleList(_SelfResidualAttention(w) for _ in range(n))

    def forward(self, x):
        for layer in self.cross:
            x = x + layer(x)
        return x


def test_an_output_that_already_holds_the_stream_is_not_a_branch_of_it():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    _oracle_check(perturbed(_AddsItAgain()), x, lambda m: m(x).square().mean(), ["cross.0.o", "cross.1.o"])
