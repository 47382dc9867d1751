"""The op: identity forward, grad + tau*z backward, training only, loss-scale gain, storage dtype, compile."""
import copy
import pickle

import pytest
import torch

import hf_penal
from hf_penal import PenalConnection, penal


def _branch_grads(fn, tau):
    torch.manual_seed(0)
    w = torch.randn(5, 5, requires_grad=True)
    x = torch.randn(4, 5)
    z = x @ w
    y = fn(z)
    loss = (y.sin() * torch.arange(5.0)).sum()
    if tau is not None:
        loss = loss + tau / 2 * (z ** 2).sum()
    loss.backward()
    return y.detach(), w.grad


def test_functional_penal_is_identity_forward_and_adds_tau_z_backward():
    y_ref, g_oracle = _branch_grads(lambda z: z, tau=0.1)
    y, g = _branch_grads(lambda z: penal(z, 0.1), tau=None)
    assert torch.equal(y, y_ref)
    torch.testing.assert_close(g, g_oracle, rtol=1e-6, atol=1e-7)


def test_module_penalizes_only_in_training_with_grad():
    conn = PenalConnection(tau=0.1)
    assert repr(conn) == "PenalConnection(tau=0.1)"
    assert repr(PenalConnection()) == "PenalConnection(tau=0.0003)"
    _, g_oracle = _branch_grads(lambda z: z, tau=0.1)
    _, g_plain = _branch_grads(lambda z: z, tau=None)
    _, g = _branch_grads(conn, tau=None)
    torch.testing.assert_close(g, g_oracle)
    conn.eval()
    _, g = _branch_grads(conn, tau=None)
    assert torch.equal(g, g_plain)
    conn.train()
    z = torch.randn(3, requires_grad=True)
    with torch.no_grad():
        assert conn(z) is z  # no work at all
    with torch.inference_mode():
        t = torch.randn(3)
        assert conn(t) is t


def test_tau_is_a_float32_buffer_that_survives_half_and_is_not_saved():
    conn = PenalConnection(tau=1e-3).half()
    assert conn.tau.dtype == torch.float32 and conn.gain.dtype == torch.float32
    assert conn.state_dict() == {}


def test_gain_scales_the_added_term_like_a_loss_scale():
    """With the loss multiplied by S (a loss scaler) and gain S, unscaled gradients equal the fp32 oracle."""
    S = 1024.0
    _, g_oracle = _branch_grads(lambda z: z, tau=0.1)
    conn = PenalConnection(tau=0.1)
    torch.manual_seed(0)
    w = torch.randn(5, 5, requires_grad=True)
    z = torch.randn(4, 5) @ w
    conn.gain.fill_(S)
    (S * (conn(z).sin() * torch.arange(5.0)).sum()).backward()
    torch.testing.assert_close(w.grad / S, g_oracle)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_storage_dtype_keeps_z_in_low_precision_with_small_error(dtype):
    _, g_oracle = _branch_grads(lambda z: z, tau=0.1)
    conn = PenalConnection(tau=0.1, storage_dtype=dtype)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        _, g = _branch_grads(conn, tau=None)
    assert any(t.dtype == dtype for t in saved)
    torch.testing.assert_close(g, g_oracle, rtol=2e-2, atol=2e-3)


def test_copy_mode_survives_in_place_ops_after_the_site():
    _, g_oracle = _branch_grads(lambda z: torch.relu(z + 1.0), tau=0.1)
    conn = PenalConnection(tau=0.1, copy=True)

    def inplace(z):
        out = conn(z)
        out += 1.0
        return out.relu_()

    _, g = _branch_grads(inplace, tau=None)
    torch.testing.assert_close(g, g_oracle)


def test_compiled_op_does_not_recompile_when_tau_changes():
    import torch._dynamo
    torch._dynamo.reset()
    frames = []

    def backend(gm, example_inputs):
        frames.append(gm)
        return gm.forward

    lin = torch.nn.Sequential(torch.nn.Linear(4, 4), PenalConnection(tau=0.1))
    fn = torch.compile(lin, backend=backend)
    x = torch.randn(2, 4)
    grads = []
    for tau in (0.1, 0.2, 0.3):
        lin[1].tau.fill_(tau)
        lin.zero_grad()
        fn(x).sum().backward()
        grads.append(lin[0].weight.grad.clone())
    assert len(frames) == 1
    # the changed tau took effect: grad = d(sum)/dW + tau * z x^T
    z = lin[0](x).detach()
    for tau, g in zip((0.1, 0.2, 0.3), grads):
        torch.testing.assert_close(g, (torch.ones(2, 4) + tau * z).T @ x)


def test_deepcopy_and_pickle_keep_the_connection():
    conn = torch.nn.Sequential(torch.nn.Linear(3, 3), PenalConnection(tau=0.5))
    for clone in (copy.deepcopy(conn), pickle.loads(pickle.dumps(conn))):
        assert clone[1].tau.item() == 0.5
    assert hf_penal.PenalConnection is PenalConnection
