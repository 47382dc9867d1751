"""PenalTrainer / PenalCallback / PenalTrainingArguments.

Oracles: the τ schedule formulas (schedules.py, tested alone), and the explicit-penalty loss
L + τ/2·Σ‖z‖² on the vanilla model (tests/_oracle.py) for every statement about parameter updates.
"""
import copy
import json
import os
import shutil
import subprocess
import sys
import weakref

import pytest
import torch
from _oracle import grads as oracle_grads
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

import hf_penal
from hf_penal import schedules
from hf_penal.trainer import PenalCallback, PenalTrainer, PenalTrainingArguments

SITES = [(r"bert\.encoder\.layer\.\d+\.attention\.output\.dropout", None),
         (r"bert\.encoder\.layer\.\d+\.output\.dropout", None)]


def _config(layers=2):
    return BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, initializer_range=0.2)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = str(tmp_path_factory.mktemp("bert"))
    BertForSequenceClassification(_config()).save_pretrained(d)
    return d


def _data(n=8, seq=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (n, seq), generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    return [{"input_ids": ids[i].tolist(), "labels": int(labels[i])} for i in range(n)]


def _args(out, **kw):
    base = {"output_dir": str(out), "use_cpu": True, "report_to": "none", "disable_tqdm": True, "seed": 0,
            "save_strategy": "no", "logging_steps": 1, "per_device_train_batch_size": 4}
    base.update(kw)
    return PenalTrainingArguments(**base)


class _Recorder(TrainerCallback):
    """Stands in for a report_to back-end: keeps every `logs` dict it is handed."""

    def __init__(self):
        self.rows = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.rows.append(dict(logs))


def _taus(history):
    return {row["step"]: row["penal/tau"] for row in history if "penal/tau" in row}


# ------------------------------------------------------------------------------------------------------------ args
def test_penal_fields_appear_in_argument_parser_help_and_parse():
    parser = HfArgumentParser(PenalTrainingArguments)
    helptext = parser.format_help()
    for flag in ("--penal_tau", "--no_penal", "--penal_schedule", "--penal_warmup_ratio", "--penal_warmup_steps",
                 "--penal_final_tau", "--penal_milestones", "--penal_gamma", "--penal_depth_profile",
                 "--penal_log_efficiency", "--penal_sites", "--penal_storage_dtype"):
        assert flag in helptext
    assert "Markov efficiency" in helptext
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", "x", "--use_cpu", "--penal_tau", "1e-3", "--penal_schedule", "step", "--penal_milestones",
         "20,10", "--no_penal", "--penal_depth_profile", "decreasing"])
    assert (args.penal, args.penal_tau, args.penal_schedule, args.penal_milestones, args.penal_depth_profile) == (
        False, 1e-3, "step", "10,20", "decreasing")
    d = args.to_dict()
    assert d["penal_tau"] == 1e-3 and d["penal_milestones"] == "10,20" and d["penal"] is False


@pytest.mark.parametrize("field, value, allowed", [
    ("penal_schedule", "exponential", "constant"), ("penal_depth_profile", "random", "uniform"),
    ("penal_tau", -1.0, ">= 0"), ("penal_warmup_ratio", 1.5, "[0, 1]"), ("penal_milestones", "a,b", "optimizer"),
    ("penal_storage_dtype", "int8", "bfloat16"), ("penal_sites", "[unclosed", "regex")])
def test_bad_penal_values_raise_naming_the_field(field, value, allowed):
    with pytest.raises(ValueError, match=field) as e:
        PenalTrainingArguments(output_dir="x", use_cpu=True, **{field: value})
    assert allowed in str(e.value)


def test_step_schedule_needs_milestones_and_accepts_a_list():
    with pytest.raises(ValueError, match="penal_milestones"):
        PenalTrainingArguments(output_dir="x", use_cpu=True, penal_schedule="step")
    assert PenalTrainingArguments(output_dir="x", use_cpu=True, penal_schedule="step",
                                  penal_milestones=[30, 10]).penal_milestones == "10,30"


# ------------------------------------------------------------------------------------------------------------ runs
def test_short_run_logs_tau_and_per_layer_efficiency_to_log_history_and_reporters_and_plots(bert_dir, tmp_path):
    rec = _Recorder()
    args = _args(tmp_path / "run", max_steps=4, penal_tau=2e-3, penal_schedule="linear", penal_warmup_steps=1,
                 penal_final_tau=1e-3, penal_log_efficiency=True, save_strategy="steps", save_steps=4)
    model = BertForSequenceClassification.from_pretrained(bert_dir)
    tr = PenalTrainer(model=model, args=args, train_dataset=_data(16), callbacks=[rec])
    tr.train()
    hist = tr.state.log_history
    # tau of the step just finished: schedule(step - 1)
    want = {s: schedules.linear(s - 1, 4, 2e-3, 1e-3, warmup_steps=1) for s in range(1, 5)}
    assert _taus(hist) == pytest.approx(want)
    rows = [r for r in hist if "loss" in r]
    assert len(rows) == 4
    for r in rows:
        effs = [r[f"penal/efficiency/layer_{i:02d}"] for i in range(2)]
        assert all(-1 <= e <= 1 for e in effs) and effs[0] != effs[1]
        assert r["penal/efficiency"] == pytest.approx(sum(effs) / 2)
        assert r["penal/z_norm/layer_00"] > 0
    assert [r["penal/tau"] for r in rec.rows if "loss" in r] == pytest.approx(list(want.values()))  # back-ends see it
    assert model.config.penal["tau"] == 2e-3  # recorded config keeps the configured peak
    assert all(c.tau.item() == pytest.approx(2e-3) and c.gain.item() == 1 and not c.measure_efficiency
               for _, c in hf_penal.surgery.connections(model))  # left as configured after training
    # training_args.bin is a pickle (transformers' format): check it names the penal fields without unpickling it
    raw = (tmp_path / "run" / "checkpoint-4" / "training_args.bin").read_bytes()
    assert all(f.encode() in raw for f in ("penal_tau", "penal_schedule", "penal_log_efficiency"))

    out = tmp_path / "diag.png"
    r = subprocess.run([sys.executable, "-m", "hf_penal.cli", "plot", str(tmp_path / "run"), "-o", str(out)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from hf_penal.plot import plot_run  # default output name
    assert plot_run(str(tmp_path / "run")) == os.path.join(str(tmp_path / "run"), "penal_diagnostics.png")


def test_resume_from_checkpoint_continues_the_exact_tau_trajectory(bert_dir, tmp_path):
    def run(resume):
        args = _args(tmp_path / "out", max_steps=6, penal_tau=1e-3, penal_schedule="cosine", penal_warmup_steps=2,
                     penal_final_tau=1e-4, save_strategy="steps", save_steps=3)
        tr = PenalTrainer(model=BertForSequenceClassification.from_pretrained(bert_dir), args=args,
                          train_dataset=_data(48))
        tr.train(resume_from_checkpoint=resume)
        return _taus(tr.state.log_history)

    full = run(None)
    assert full == pytest.approx({s: schedules.cosine(s - 1, 6, 1e-3, 1e-4, 2) for s in range(1, 7)})
    shutil.rmtree(tmp_path / "out" / "checkpoint-6")
    resumed = run(str(tmp_path / "out" / "checkpoint-3"))
    # rows 1-3 come back from checkpoint-3's trainer_state.json; rows 4-6 are the resumed run's
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    assert all(resumed[s] == full[s] for s in resumed)  # exactly, not approximately


def test_resume_keeps_the_calibrated_taus_exactly_and_weights_match_the_full_run(bert_dir, tmp_path):
    def run(resume, trainer_cls=PenalTrainer):
        args = _args(tmp_path / "out", max_steps=6, penal_tau="auto", penal_tau_ratio=0.1, save_strategy="steps",
                     save_steps=3, optim="sgd", learning_rate=0.1, lr_scheduler_type="constant")
        model = BertForSequenceClassification.from_pretrained(bert_dir)
        tr = PenalTrainer(model=model, args=args, train_dataset=_data(48))
        tr.train(resume_from_checkpoint=resume)
        return _taus(tr.state.log_history), hf_penal.penal_config(model).tau_calibrated, model

    full, cal_full, m_full = run(None)
    saved = json.loads((tmp_path / "out" / "checkpoint-3" / "penal_calibration.json").read_text())
    assert saved == cal_full and len(saved) == 4
    shutil.rmtree(tmp_path / "out" / "checkpoint-6")
    resumed, cal_resumed, m_res = run(str(tmp_path / "out" / "checkpoint-3"))
    assert cal_resumed == cal_full  # restored, not measured again on the trained weights
    assert all(resumed[s] == full[s] for s in resumed) and sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for (n, p), (_, q) in zip(m_full.named_parameters(), m_res.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), n


def _one_sgd_step(bert_dir, out, batch, accum, lr=0.5, tau=0.05, **kw):
    model = BertForSequenceClassification.from_pretrained(bert_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = _args(out, max_steps=1, per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
                 optim="sgd", learning_rate=lr, lr_scheduler_type="constant", max_grad_norm=0.0, penal_tau=tau, **kw)
    tr = PenalTrainer(model=model, args=args, train_dataset=_data(8))
    # transformers 5.x sees BERT's **kwargs as "accepts num_items_in_batch" and then skips dividing the loss by the
    # accumulation steps, which BERT's classification loss ignores: a Trainer issue unrelated to the penalty
    tr.model_accepts_loss_kwargs = False
    tr.train()
    return {n: (p.detach() - before[n]) for n, p in model.named_parameters()}


def _oracle_update(bert_dir, lr, tau):
    model = BertForSequenceClassification.from_pretrained(bert_dir)
    batch = _data(8)
    ids = torch.tensor([b["input_ids"] for b in batch])
    labels = torch.tensor([b["labels"] for b in batch])
    g, _, n = oracle_grads(model, lambda m: m(input_ids=ids, labels=labels).loss, SITES, tau=tau)
    assert n == 4
    return {k: -lr * v for k, v in g.items()}


def _max_rel(a, b):
    scale = max(v.abs().max().item() for v in b.values())
    return max((a[k] - b[k]).abs().max().item() for k in b) / scale


def test_accumulation_gives_the_same_update_as_one_large_batch_and_the_oracle(bert_dir, tmp_path):
    want = _oracle_update(bert_dir, 0.5, 0.05)
    no_penalty = _oracle_update(bert_dir, 0.5, 0.0)
    assert _max_rel(no_penalty, want) > 1e-2  # the penalty is big enough to be seen
    big = _one_sgd_step(bert_dir, tmp_path / "a", batch=8, accum=1)
    acc = _one_sgd_step(bert_dir, tmp_path / "b", batch=4, accum=2)
    assert _max_rel(big, want) < 1e-5
    assert _max_rel(acc, want) < 1e-5


def test_bf16_autocast_update_is_close_to_the_fp32_oracle(bert_dir, tmp_path):
    want = _oracle_update(bert_dir, 0.5, 0.05)
    got = _one_sgd_step(bert_dir, tmp_path / "bf16", batch=8, accum=1, bf16=True)
    assert _max_rel(got, want) < 3e-2
    # and bf16 keeps the penalty: the fp32 update without it is much further away
    assert _max_rel(_oracle_update(bert_dir, 0.5, 0.0), want) > 3 * _max_rel(got, want)


# ------------------------------------------------------------------------------------------------------------ scaler
class _TrainerWithScaler:
    """What PenalCallback reads from a Trainer: `accelerator.scaler` and its callback list."""

    class _Obj:
        pass

    def __init__(self, scaler):
        self.accelerator = self._Obj()
        self.accelerator.scaler = scaler
        self.callback_handler = self._Obj()
        self.callback_handler.callbacks = []


def _hand_loop(model, scaler=None, follow=None, steps=3, lr=0.05):
    """SGD steps on fixed batches; with a GradScaler the loss is scaled and the grads unscaled before stepping.
    follow: None, "set_loss_scale" (the manual API) or "callback" (PenalCallback reading the scaler)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    cb = None
    if follow == "callback":
        cb = PenalCallback()  # tau from the model's own config
        fake = _TrainerWithScaler(scaler)
        cb.attach(fake)
        cb._keep = fake  # the callback holds a weak reference
        args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
        cb.on_train_begin(args, TrainerState(), TrainerControl(), model=model)
    model.train()
    for step in range(steps):
        ids, labels = (torch.tensor([b["input_ids"] for b in _data(4, seed=step)]),
                       torch.tensor([b["labels"] for b in _data(4, seed=step)]))
        if follow == "set_loss_scale":
            hf_penal.set_loss_scale(model, scaler.get_scale())
        elif cb is not None:
            cb.on_step_begin(args, TrainerState(global_step=step, max_steps=steps), TrainerControl(), model=model)
        opt.zero_grad()
        loss = model(input_ids=ids, labels=labels).loss
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)  # unscales, then steps
            scaler.update()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


TAU_S = 0.01  # large enough to matter, small enough that 3 SGD steps stay well behaved


def _scaler():
    # growth every step: the gain must follow a scale that changes (2^10, 2^11, 2^12)
    return torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1)


@pytest.mark.parametrize("follow", ["set_loss_scale", "callback"])
def test_grad_scaler_update_equals_fp32_when_the_gain_follows_the_scale(bert_dir, follow):
    base = BertForSequenceClassification.from_pretrained(bert_dir)
    fp32 = _hand_loop(hf_penal.apply(copy.deepcopy(base), tau=TAU_S))
    scaled = _hand_loop(hf_penal.apply(copy.deepcopy(base), tau=TAU_S), _scaler(), follow=follow)
    moved = {k: fp32[k] - v for k, v in base.state_dict().items() if k in fp32}
    assert max((scaled[k] - fp32[k]).abs().max().item() for k in fp32) < 1e-5 * max(
        v.abs().max().item() for v in moved.values())


def test_grad_scaler_without_the_gain_silently_shrinks_the_penalty(bert_dir):
    base = BertForSequenceClassification.from_pretrained(bert_dir)
    fp32 = _hand_loop(hf_penal.apply(copy.deepcopy(base), tau=TAU_S))
    wrong = _hand_loop(hf_penal.apply(copy.deepcopy(base), tau=TAU_S), _scaler())  # nobody tells the op the scale
    plain = _hand_loop(copy.deepcopy(base))  # no penalty at all
    err = max((wrong[k] - fp32[k]).abs().max().item() for k in fp32)
    assert err > 1e-3
    # penalty divided by ~1000: indistinguishable from training without it
    assert max((wrong[k] - plain[k]).abs().max().item() for k in plain) < 1e-2 * err


def test_gain_is_loss_scale_times_world_size(bert_dir):
    model = hf_penal.apply(BertForSequenceClassification.from_pretrained(bert_dir), tau=1e-3)
    scaler = _scaler()
    scaler._lazy_init_scale_growth_tracker(torch.device("cpu"))
    scaler._scale.fill_(512.0)
    cb = PenalCallback()
    fake = _TrainerWithScaler(scaler)
    cb.attach(fake)

    class _Args:  # DDP over 4 ranks averages gradients: the summed penalty needs x4
        world_size = 4
        fp16 = True

    cb.on_train_begin(_Args(), TrainerState(), TrainerControl(), model=model)
    cb.on_step_begin(_Args(), TrainerState(global_step=0, max_steps=1), TrainerControl(), model=model)
    assert {c.gain.item() for _, c in hf_penal.surgery.connections(model)} == {2048.0}
    assert weakref.getweakrefcount(fake) >= 1


# ------------------------------------------------------------------------------------------------------------ wiring
def test_penal_callback_alone_with_a_plain_trainer(bert_dir, tmp_path):
    rec = _Recorder()
    model = BertForSequenceClassification.from_pretrained(bert_dir)  # no penal connections
    cb = PenalCallback(tau=4e-3, schedule="cosine", final_tau=1e-3, log_efficiency=True)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", disable_tqdm=True,
                             max_steps=3, logging_steps=1, per_device_train_batch_size=4, save_strategy="no")
    tr = Trainer(model=model, args=args, train_dataset=_data(12), callbacks=[rec])
    cb.attach(tr)
    tr.train()
    assert len(hf_penal.sites(model)) == 4 and model.config.penal["tau"] == 4e-3
    want = {s: schedules.cosine(s - 1, 3, 4e-3, 1e-3) for s in (1, 2, 3)}
    assert _taus(tr.state.log_history) == pytest.approx(want)
    seen = [r for r in rec.rows if "loss" in r]  # the callback moved itself ahead of the "reporter"
    assert [r["penal/tau"] for r in seen] == pytest.approx(list(want.values()))
    assert all("penal/efficiency/layer_01" in r for r in seen)


def test_unattached_callback_warns_what_it_cannot_do_and_still_penalizes(bert_dir, tmp_path):
    from transformers.testing_utils import CaptureLogger

    from hf_penal import trainer as penal_trainer

    model = BertForSequenceClassification.from_pretrained(bert_dir)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", disable_tqdm=True,
                             max_steps=1, per_device_train_batch_size=4, save_strategy="no")
    tr = Trainer(model=model, args=args, train_dataset=_data(4), callbacks=[PenalCallback(tau=4e-3)])
    with CaptureLogger(penal_trainer.logger) as cl:
        tr.train()
    assert "attach(trainer)" in cl.out and "loss scale" in cl.out
    assert hf_penal.penal_config(model).tau == 4e-3


def test_trainer_uses_the_models_own_penal_config_and_arguments_override_it(bert_dir, tmp_path):
    d = str(tmp_path / "penal_model")
    hf_penal.apply(BertForSequenceClassification.from_pretrained(bert_dir), tau=7e-4, sites="mlp").save_pretrained(d)

    model = BertForSequenceClassification.from_pretrained(d)
    PenalTrainer(model=model, args=_args(tmp_path / "a", max_steps=1))
    assert hf_penal.penal_config(model).tau == 7e-4 and {s.kind for s in hf_penal.sites(model)} == {"mlp"}

    model = BertForSequenceClassification.from_pretrained(d)
    PenalTrainer(model=model, args=_args(tmp_path / "b", max_steps=1, penal_tau=2e-3))
    assert hf_penal.penal_config(model).tau == 2e-3 and model.config.penal["tau"] == 2e-3
    assert {s.kind for s in hf_penal.sites(model)} == {"mlp"}  # what the arguments leave unset stays the model's

    model = BertForSequenceClassification.from_pretrained(d)
    PenalTrainer(model=model, args=_args(tmp_path / "c", max_steps=1, penal_sites="attention"))
    assert {s.kind for s in hf_penal.sites(model)} == {"attention"} and hf_penal.penal_config(model).tau == 7e-4

    model = BertForSequenceClassification.from_pretrained(d)
    PenalTrainer(model=model, args=_args(tmp_path / "d", max_steps=1, penal=False))
    assert hf_penal.penal_config(model) is None and not hasattr(model.config, "penal")  # plain baseline


def test_plain_baseline_can_still_measure_efficiency_with_tau_zero_probes(bert_dir, tmp_path):
    model = BertForSequenceClassification.from_pretrained(bert_dir)
    tr = PenalTrainer(model=model, args=_args(tmp_path, max_steps=2, penal=False, penal_log_efficiency=True),
                      train_dataset=_data(8))
    tr.train()
    rows = [r for r in tr.state.log_history if "loss" in r]
    assert all(r["penal/tau"] == 0.0 and -1 <= r["penal/efficiency"] <= 1 for r in rows)
    assert not hasattr(model.config, "penal")  # checkpoints stay plain


def test_default_tau_without_arguments_or_model_config(bert_dir, tmp_path):
    model = BertForSequenceClassification.from_pretrained(bert_dir)
    tr = PenalTrainer(model=model, args=_args(tmp_path, max_steps=1), train_dataset=_data(4))
    tr.train()
    cfg = hf_penal.penal_config(model)
    assert cfg.tau == "auto" and cfg.tau_calibrated and len(cfg.tau_calibrated) == 4  # calibrated in step 1
    assert _taus(tr.state.log_history)[1] == pytest.approx(sum(cfg.tau_calibrated.values()) / 4)
    assert model.config.penal["tau_calibrated"] == cfg.tau_calibrated  # recorded at train end
