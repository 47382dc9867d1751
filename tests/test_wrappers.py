"""One unwrap rule at the public boundary: every public function takes the model as the user holds it (DDP on 2 gloo
ranks, torch.compile'd, PEFT) and acts on the penalized model inside; a function that needs penal connections raises
a ValueError naming itself on a model without them, never a silent no-op."""

import pytest
import torch
from _models import saved
from _two_ranks import launch_two_ranks
from _wrapper_checks import TAU, check, exercise

import hf_penal


@pytest.fixture
def bert(tmp_path):
    d, auto, inputs = saved("bert", tmp_path)
    return lambda **kw: auto.from_pretrained(d, **kw), inputs


def test_compiled_model(bert):
    load, inputs = bert
    inner = load(penal_tau=TAU)
    check(exercise(torch.compile(inner, backend="aot_eager"), inner, inputs))


def test_peft_model(bert):
    peft = pytest.importorskip("peft")
    load, inputs = bert
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS")
    wrapped = peft.get_peft_model(load(penal_tau=TAU), lora)
    check(exercise(wrapped, wrapped.base_model.model, inputs))


def test_plain_model(bert):
    load, inputs = bert
    model = load(penal_tau=TAU)
    check(exercise(model, model, inputs))


def test_ddp_model_on_two_ranks(tmp_path):
    pytest.importorskip("accelerate")
    ranks = launch_two_ranks("_wrapper_worker.py", tmp_path)
    for rec in ranks:
        assert rec["world"] == 2 and rec["wrapped"] == "DistributedDataParallel"
        # set_loss_scale(ddp_model, 1.0, world_size=2) reached the connections: the penalty is not halved by DDP
        assert rec["grad_rel_err"] < 1e-5
        check(rec)
    assert ranks[0]["calibrated"] == ranks[1]["calibrated"]  # calibrate(ddp_model, batch) synchronised the ranks


def test_a_residual_mode_without_connections_gets_them_from_set_tau(bert):
    load, _ = bert
    model = load(penal={"mode": "scaled", "skip_scale": 0.5})  # tau=0: the mode alone, no penal connection
    assert not any(isinstance(m, hf_penal.PenalConnection) for m in model.modules())
    hf_penal.set_tau(model, TAU)
    conns = [m for m in model.modules() if isinstance(m, hf_penal.PenalConnection)]
    assert len(conns) == 4 and all(c.tau.item() == pytest.approx(TAU) for c in conns)
    assert hf_penal.penal_config(model).tau == TAU and hf_penal.penal_config(model).skip_scale == 0.5
