"""Adds that are not residual: a position embedding added to the normed stream (DETR-style layers). The probe used to
take ``norm(x) + pos`` for a branch ending at the norm, so the penalty shrank a LayerNorm's output. A residual
branch's output is computed, within its layer, from the skip it is added to, and is used only in that add."""
from __future__ import annotations

import copy

import torch
from _models import perturbed
from _oracle import grads, rel_err
from torch import nn

import hf_penal

W, TAU = 16, 0.3


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(W, W) for _ in range(4))

    def forward(self, query, key, value):
        a = torch.softmax(self.q(query) @ self.k(key).transpose(1, 2) / W ** 0.5, -1)
        return self.o(a @ self.v(value))


class PreNormLayer(nn.Module):
    """Sam3's DETR encoder layer: q = k = norm1(x) + pos, value = norm1(x); the stream enters every layer again."""

    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(W), nn.LayerNorm(W)
        self.attn = _Attention()
        self.mlp = nn.Sequential(nn.Linear(W, 2 * W), nn.GELU(), nn.Linear(2 * W, W))

    def forward(self, x, pos):
        h = self.norm1(x)
        q = h + pos
        x = x + self.attn(q, q, h)
        return x + self.mlp(self.norm2(x))


class PostNormLayer(nn.Module):
    """A post-norm DETR decoder layer: the query position is added to the stream after each norm, and the stream
    (the norm's output) is also the next residual."""

    def __init__(self):
        super().__init__()
        self.self_attn, self.cross_attn = _Attention(), _Attention()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(W), nn.LayerNorm(W), nn.LayerNorm(W)
        self.mlp = nn.Sequential(nn.Linear(W, 2 * W), nn.GELU(), nn.Linear(2 * W, W))

    def forward(self, x, pos, memory):
        q = x + pos
        x = self.norm1(x + self.self_attn(q, q, x))
        x = self.norm2(x + self.cross_attn(x + pos, memory, memory))
        return self.norm3(x + self.mlp(x))


class Stack(nn.Module):
    def __init__(self, layer, n=2):
        super().__init__()
        self.layers = nn.ModuleList(layer() for _ in range(n))

    def forward(self, x, pos, *rest):
        for layer in self.layers:
            x = layer(x, pos, *rest)
        return x


def _inputs(*extra):
    g = torch.Generator().manual_seed(1)
    return tuple(torch.randn(2, 6, W, generator=g) for _ in range(2 + len(extra)))


def _check(model, inputs, expected):
    vanilla = perturbed(model)
    found = hf_penal.sites(vanilla, (inputs, {}))
    assert [s.name for s in found] == expected
    penal = hf_penal.apply(copy.deepcopy(vanilla), tau=TAU, example_inputs=(inputs, {}))
    loss = lambda m: m(*inputs).square().mean()  # noqa: E731
    want, _, n = grads(vanilla, loss, [(rf"{s}", None) for s in expected], tau=TAU)
    got, _, _ = grads(penal, loss)
    assert n == len(expected)
    assert rel_err(got, want) < 1e-5


def test_a_position_embedding_added_to_the_normed_stream_is_not_a_site():
    torch.manual_seed(0)
    expected = [f"layers.{i}.{b}" for i in range(2) for b in ("attn", "mlp")]
    _check(Stack(PreNormLayer), _inputs(), expected)


def test_a_position_embedding_added_after_a_post_norm_is_not_a_site():
    torch.manual_seed(0)
    expected = [f"layers.{i}.{b}" for i in range(2) for b in ("self_attn", "cross_attn", "mlp")]
    _check(Stack(PostNormLayer), _inputs(0), expected)


class InPlaceLayer(nn.Module):
    """Twins' position convolution: z = proj(x); z += x, then z (now the stream) is used on."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(W, W)

    def forward(self, x, pos):
        z = self.proj(x)
        z += x
        return torch.tanh(z) * z


class PartialLayer(nn.Module):
    """ReXNet: the skip is added to the first channels of z, the other channels of z are passed on."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(W, W)

    def forward(self, x, pos):
        z, h = self.proj(x), W // 2
        return torch.cat([z[..., :h] + x[..., :h], z[..., h:]], -1)


def test_a_branch_added_into_in_place_or_on_its_first_channels_stays_a_site():
    torch.manual_seed(0)
    _check(Stack(InPlaceLayer), _inputs(), ["layers.0.proj", "layers.1.proj"])
    _check(Stack(PartialLayer), _inputs(), ["layers.0.proj", "layers.1.proj"])
