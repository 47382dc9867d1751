"""tau="auto": per-site τ_l = ρ·‖∂L/∂z_l‖/‖z_l‖ measured on a clean first backward, then held fixed.

Oracles, independent of hf_penal: the vanilla model with hooks that capture each branch output z (and its gradient)
gives ‖∂L/∂z_l‖ and ‖z_l‖, hence the expected τ_l; the explicit loss L + Σ_l τ_l/2·‖z_l‖² on the vanilla model gives
the expected parameter gradients of every later step.
"""
import json

import pytest
import torch
from _models import SPEC, hf_loss, saved
from _oracle import grads as oracle_grads
from _oracle import rel_err
from _two_ranks import launch_two_ranks

import hf_penal
from hf_penal.calibration import calibrated_taus

RHO = 0.1


def _site_modules(model, zspec):
    import re
    return [(n, m, idx) for n, m in model.named_modules() for rx, idx in zspec if re.fullmatch(rx, n)]


def expected_taus(model, loss_fn, zspec, rho=RHO, scale=1.0):
    """ρ·‖g‖/‖z‖ per site of the vanilla `model` (the gradient of loss_fn, unscaled by `scale`)."""
    captured, handles = {}, []
    for name, mod, idx in _site_modules(model, zspec):
        def hook(m, a, out, name=name, idx=idx):
            z = out if idx is None else out[idx]
            z.retain_grad()
            captured[name] = z
        handles.append(mod.register_forward_hook(hook))
    model.train()
    model.zero_grad(set_to_none=True)
    try:
        (loss_fn(model) * scale).backward()
    finally:
        for h in handles:
            h.remove()
    model.zero_grad(set_to_none=True)
    return {n: rho * (z.grad.double().norm() / scale / z.detach().double().norm()).item() for n, z in captured.items()}


def per_site_oracle(model, loss_fn, zspec, taus):
    """Parameter gradients of loss_fn + Σ τ_l/2·‖z_l‖² (τ_l by module name) on the vanilla `model`."""
    captured, handles = [], []
    for name, mod, idx in _site_modules(model, zspec):
        def hook(m, a, out, name=name, idx=idx):
            captured.append((taus[name], out if idx is None else out[idx]))
        handles.append(mod.register_forward_hook(hook))
    model.train()
    model.zero_grad(set_to_none=True)
    try:
        loss = loss_fn(model) + sum(t / 2 * (z.float() ** 2).sum() for t, z in captured)
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    g = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return g


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "t5", "vit"])
def test_first_backward_is_clean_and_measures_rho_grad_over_z_then_penalizes_with_those_taus(arch, tmp_path):
    d, auto, inputs = saved(arch, tmp_path)
    zspec = SPEC[arch][0]
    vanilla = auto.from_pretrained(d)
    want = expected_taus(vanilla, hf_loss(inputs), zspec)
    g_plain, _, _ = oracle_grads(vanilla, hf_loss(inputs))

    model = auto.from_pretrained(d, penal={"tau": "auto", "tau_ratio": RHO})
    g1, _, _ = oracle_grads(model, hf_loss(inputs))
    assert rel_err(g1, g_plain) == 0.0  # the calibrating backward adds nothing
    got = calibrated_taus(model)
    assert set(got) == set(want) and len(got) == len(hf_penal.sites(model))
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-4)

    g2, _, _ = oracle_grads(model, hf_loss(inputs))  # the second backward: penalized with the measured τ_l
    g_oracle = per_site_oracle(vanilla, hf_loss(inputs), zspec, got)
    assert rel_err({k: g2[k] for k in g_oracle}, g_oracle) < 1e-5
    assert rel_err({k: g2[k] for k in g_oracle}, {k: g_plain[k] for k in g_oracle}) > 1e-4  # not a no-op


def test_calibration_is_invariant_to_the_loss_scale(tmp_path):
    d, auto, inputs = saved("bert", tmp_path)
    ref = auto.from_pretrained(d, penal_tau="auto", penal_tau_ratio=RHO)
    oracle_grads(ref, hf_loss(inputs))
    scaled = auto.from_pretrained(d, penal_tau="auto", penal_tau_ratio=RHO)
    hf_penal.set_loss_scale(scaled, 1024.0)  # what PenalTrainer does under a GradScaler
    scaled.train()
    (scaled(**inputs).loss * 1024.0).backward()
    a, b = calibrated_taus(ref), calibrated_taus(scaled)
    assert a.keys() == b.keys() and all(b[k] == pytest.approx(a[k], rel=1e-5) for k in a)


def test_ratio_scales_tau_linearly_and_eval_or_no_grad_never_calibrates(tmp_path):
    d, auto, inputs = saved("bert", tmp_path)
    m1 = auto.from_pretrained(d, penal={"tau": "auto", "tau_ratio": 0.01})
    m2 = auto.from_pretrained(d, penal={"tau": "auto", "tau_ratio": 0.3})
    for m in (m1, m2):
        m.eval()
        m(**inputs).loss.backward()  # eval: nothing measured
        m.train()
        with torch.no_grad():
            m(**inputs)
        assert calibrated_taus(m) == {}
        oracle_grads(m, hf_loss(inputs))
    t1, t2 = calibrated_taus(m1), calibrated_taus(m2)
    assert all(t2[k] == pytest.approx(30 * t1[k], rel=1e-5) for k in t1)


def test_calibrated_taus_are_saved_in_config_json_and_restored_without_recalibrating(tmp_path):
    d, auto, inputs = saved("bert", tmp_path)
    model = auto.from_pretrained(d, penal_tau="auto", penal_tau_ratio=RHO)
    oracle_grads(model, hf_loss(inputs))
    taus = calibrated_taus(model)
    out = tmp_path / "saved"
    model.save_pretrained(out)
    penal = json.loads((out / "config.json").read_text())["penal"]
    assert penal["tau"] == "auto" and penal["tau_ratio"] == RHO and penal["tau_calibrated"] == pytest.approx(taus)
    g_before, _, _ = oracle_grads(model, hf_loss(inputs))

    reloaded = auto.from_pretrained(out)
    assert calibrated_taus(reloaded) == pytest.approx(taus)
    g_after, _, _ = oracle_grads(reloaded, hf_loss(inputs))  # first backward already penalized: no recalibration
    assert rel_err(g_after, g_before) < 1e-6
    assert "calibrated=" in repr(reloaded)

    hf_penal.calibrate(reloaded)  # asked: measure again on the next training backward
    assert calibrated_taus(reloaded) == {}
    g_re, _, _ = oracle_grads(reloaded, hf_loss(inputs))
    assert rel_err(g_re, oracle_grads(auto.from_pretrained(d), hf_loss(inputs))[0]) == 0.0


def test_explicit_calibrate_on_a_batch_matches_the_implicit_one_and_keeps_grads(tmp_path):
    d, auto, inputs = saved("gpt2", tmp_path)
    implicit = auto.from_pretrained(d, penal={"tau": "auto", "tau_ratio": RHO})
    oracle_grads(implicit, hf_loss(inputs))
    explicit = auto.from_pretrained(d, penal={"tau": "auto", "tau_ratio": RHO})
    explicit.eval()
    marker = torch.full_like(next(explicit.parameters()), 7.0)
    next(explicit.parameters()).grad = marker
    taus = hf_penal.calibrate(explicit, inputs)
    assert taus == pytest.approx(calibrated_taus(implicit), rel=1e-5)
    assert next(explicit.parameters()).grad is marker and not explicit.training
    with pytest.raises(ValueError, match="tau is fixed"):
        hf_penal.calibrate(auto.from_pretrained(d, penal_tau=1e-3), inputs)


def test_hand_written_loop_with_optimizer_trains_with_the_calibrated_taus(tmp_path):
    d, auto, inputs = saved("llama", tmp_path)
    zspec = SPEC["llama"][0]
    model = auto.from_pretrained(d, penal={"tau": "auto", "tau_ratio": RHO})
    vanilla = auto.from_pretrained(d)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_v = torch.optim.SGD(vanilla.parameters(), lr=0.1)
    taus = None
    for _ in range(3):
        model.train()
        opt.zero_grad()
        model(**inputs).loss.backward()
        if taus is None:
            taus = calibrated_taus(model)
            g = {n: p.grad for n, p in vanilla.named_parameters()}
            vanilla.train()
            vanilla(**inputs).loss.backward()
        else:
            g = per_site_oracle(vanilla, hf_loss(inputs), zspec, taus)
            for n, p in vanilla.named_parameters():
                p.grad = g.get(n)
        opt.step()
        opt_v.step()
        opt_v.zero_grad()
    for (n, p), (_, q) in zip(model.named_parameters(), vanilla.named_parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), n
    assert calibrated_taus(model) == taus  # held fixed


def test_compile_calibrates_without_recompiling(tmp_path):
    import torch._dynamo

    d, auto, inputs = saved("bert", tmp_path)
    eager = auto.from_pretrained(d, penal={"tau": "auto", "tau_ratio": RHO})
    ge = [oracle_grads(eager, hf_loss(inputs))[0] for _ in range(3)]
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    model = auto.from_pretrained(d, penal={"tau": "auto", "tau_ratio": RHO})
    cm = torch.compile(model, backend=backend)
    counts, gc = [], []
    for _ in range(4):
        model.train()
        model.zero_grad(set_to_none=True)
        cm(**inputs).loss.backward()
        gc.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        counts.append(len(graphs))
    assert calibrated_taus(model) == pytest.approx(calibrated_taus(eager), rel=1e-5)
    for a, b in zip(gc, ge):
        assert rel_err({k: a[k] for k in b if k in a}, {k: b[k] for k in b if k in a}) < 1e-5
    assert counts[-1] == counts[1], f"recompiled after calibration: graphs per call {counts}"


def test_one_default_ratio_for_models_built_from_a_config_and_loaded_with_weights(tmp_path):
    from hf_penal.config import DEFAULT_TAU_RATIO

    assert DEFAULT_TAU_RATIO == 0.01  # the quality study's selection (BENCHMARKS.md, Quality)
    d, auto, inputs = saved("bert", tmp_path)
    from transformers import AutoConfig
    assert hf_penal.penal_config(auto.from_pretrained(d, penal=True)).tau_ratio == 0.01
    scratch = auto.from_config(AutoConfig.from_pretrained(d), penal=True)
    assert hf_penal.penal_config(scratch).tau_ratio == 0.01
    assert hf_penal.penal_config(hf_penal.apply(auto.from_config(AutoConfig.from_pretrained(d)))).tau_ratio == 0.01
    assert hf_penal.penal_config(auto.from_pretrained(d, penal={"tau": 3e-4})).tau == 3e-4  # the paper's, exact


@pytest.mark.parametrize("bad, field", [({"tau": "often"}, "tau"), ({"tau": -1}, "tau"),
                                        ({"tau_ratio": 0}, "tau_ratio"), ({"tau_ratio": "x"}, "tau_ratio"),
                                        ({"tau": 1e-3, "tau_calibrated": {"a": 1.0}}, "tau_calibrated")])
def test_bad_strength_settings_name_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        hf_penal.PenalConfig(**bad)


def test_tau_strings_from_a_command_line_parse():
    assert hf_penal.PenalConfig(tau="auto").auto and hf_penal.PenalConfig(tau="AUTO").tau == "auto"
    assert hf_penal.PenalConfig(tau="3e-4").tau == 3e-4
    args = hf_penal.PenalTrainingArguments(output_dir="x", penal_tau="3e-4", report_to="none", use_cpu=True)
    assert args.penal_tau == 3e-4
    with pytest.raises(ValueError, match="penal_tau"):
        hf_penal.PenalTrainingArguments(output_dir="x", penal_tau="sometimes", report_to="none", use_cpu=True)


def test_two_ranks_hold_identical_taus_equal_to_one_process_on_the_global_batch(tmp_path):
    pytest.importorskip("accelerate")
    ranks = launch_two_ranks("_calibration_worker.py", tmp_path)
    assert ranks[0]["world"] == 2
    assert ranks[0]["taus"] == ranks[1]["taus"]  # bit-identical on every rank
    single = ranks[0]["single"]
    assert ranks[0]["taus"].keys() == single.keys()
    assert all(ranks[0]["taus"][k] == pytest.approx(single[k], rel=1e-5) for k in single)
    assert ranks[0]["local_differs"]  # before the sync each rank had its own half-batch value


def test_inspect_shows_each_sites_calibrated_tau(tmp_path, capsys):
    from hf_penal.cli import main

    d, auto, inputs = saved("bert", tmp_path)
    model = auto.from_pretrained(d, penal={"tau": "auto", "tau_ratio": RHO, "sites": "mlp"})
    oracle_grads(model, hf_loss(inputs))
    model.save_pretrained(tmp_path / "saved")
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "saved")]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("bert.")}
    taus = calibrated_taus(model)
    for name, cols in rows.items():
        assert cols[3] == (f"{taus[name]:.3g}" if name in taus else "-")
    assert len(taus) == 2 and len(rows) == 4


def test_a_branch_that_is_exactly_zero_waits_for_its_first_nonzero_output():
    from torch import nn

    lin = nn.Linear(4, 4)
    conn = hf_penal.PenalConnection("auto", tau_ratio=RHO)
    x = torch.randn(3, 4)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
    conn.train()
    z = conn(lin(x))
    (x + z).square().sum().backward()  # z == 0: nothing to calibrate against
    assert not conn.calibrated and conn.tau.item() == 0.0
    with torch.no_grad():
        lin.weight.fill_(0.1)
    z = conn(lin(x))
    zd = z.detach()
    (x + z).square().sum().backward()
    g = 2 * (x + zd)  # dL/dz of this loss
    assert conn.calibrated and conn.tau.item() == pytest.approx(RHO * (g.norm() / zd.norm()).item(), rel=1e-5)
