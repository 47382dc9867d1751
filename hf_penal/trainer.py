"""Training integration: `PenalTrainingArguments`, `PenalTrainer` and `PenalCallback`.

    args = hf_penal.PenalTrainingArguments(output_dir="out", penal_tau=3e-4, penal_schedule="cosine",
                                           penal_warmup_ratio=0.1, penal_log_efficiency=True)
    trainer = hf_penal.PenalTrainer(model=model, args=args, train_dataset=train)
    trainer.train()

With your own Trainer (subclass), the callback alone does the same work:
``trainer = Seq2SeqTrainer(..., callbacks=[hf_penal.PenalCallback(penal_tau=3e-4, penal_schedule="cosine")])``.

What the callback keeps correct, once per optimizer step (``on_step_begin``):

* τ = schedule(global_step, max_steps) × depth factor, written into the connections' τ buffers (never into the
  recorded ``config.penal``, which keeps the configured peak). A pure function of the step, so resuming from a
  checkpoint continues the exact trajectory.
* the connections' ``gain`` = current GradScaler loss scale × data-parallel world size: the gradient reaching z is
  multiplied by the scale, and DDP averages gradients over ranks, so the added τ·z must be multiplied by both to stay
  the fp32, single-process penalty. Gradient accumulation needs no correction (the penalty summed over k micro-batches
  is that of one k× larger batch). The scale is read as a tensor, without a device sync.

Logged at every logging step: ``penal/tau`` (the τ used in the step just finished) and, with
``penal_log_efficiency``, ``penal/efficiency/layer_NN``, ``penal/z_norm/layer_NN`` and ``penal/efficiency`` (see
`hf_penal.diagnostics`). Statistics are those of the logging process (rank 0 under DDP).
"""
from __future__ import annotations

import dataclasses
import json
import os
import weakref
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import DefaultFlowCallback
from transformers.utils import logging

from . import persistence, surgery
from .calibration import calibrated_taus, sync_calibration
from .config import SITE_KEYWORDS, STORAGE_NAMES, PenalConfig, check_tau
from .diagnostics import efficiency_metrics, track_efficiency
from .schedules import DEPTH_PROFILES, SCHEDULES, ScheduleFieldError, TauSchedule, parse_milestones

logger = logging.get_logger(__name__)

TAU_KEY = "penal/tau"
CALIBRATION_FILE = "penal_calibration.json"  # calibrated τ_l, written into each checkpoint folder


# ------------------------------------------------------------------------------------------------------------ args
@dataclasses.dataclass
class _PenalSettings:
    """The ``penal_*`` training settings, declared once: the fields of `PenalTrainingArguments` and what
    `PenalCallback` holds. Validated (and normalised) on creation; errors name the field."""

    penal: bool = dataclasses.field(default=True, metadata={"help": (
        "Give the model penal connections when it has none. --no_penal trains a plain baseline (connections the "
        "model already has are removed).")})
    penal_tau: str | None = dataclasses.field(default=None, metadata={"help": (
        "Penalty strength: 'auto' (one tau per site, calibrated on the first training backward as "
        "penal_tau_ratio * |dL/dz| / |z|) or an absolute tau >= 0 (the paper's formula; its reference value is "
        "3e-4). None: the model's own config.penal, else 'auto'. The schedule's peak.")})
    penal_tau_ratio: float | None = dataclasses.field(default=None, metadata={"help": (
        "rho of penal_tau='auto' (> 0). None: the model's own setting, else the default for a model built from a "
        "config or loaded with weights (see README).")})
    penal_sites: str | None = dataclasses.field(default=None, metadata={"help": (
        f"Residual sites: {' | '.join(SITE_KEYWORDS)}, or a regex over site names. None: the model's own setting, "
        "else 'all'.")})
    penal_storage_dtype: str | None = dataclasses.field(default=None, metadata={"help": (
        f"dtype z is saved in for backward: {' | '.join(STORAGE_NAMES)}. "
        "None: the model's own setting, else the activation's dtype.")})
    penal_schedule: str = dataclasses.field(default="constant", metadata={"help": (
        f"tau schedule over optimizer steps: {' | '.join(SCHEDULES)}."), "choices": list(SCHEDULES)})
    penal_warmup_ratio: float = dataclasses.field(default=0.0, metadata={"help": (
        "Fraction of the optimizer steps over which tau rises linearly from 0 (used when penal_warmup_steps is 0).")})
    penal_warmup_steps: int = dataclasses.field(default=0, metadata={"help": (
        "Optimizer steps over which tau rises linearly from 0; overrides penal_warmup_ratio when > 0.")})
    penal_final_tau: float = dataclasses.field(default=0.0, metadata={"help": (
        "tau at the last step of the linear and cosine schedules (with penal_tau='auto': a fraction of each "
        "calibrated tau).")})
    penal_milestones: str | None = dataclasses.field(default=None, metadata={"help": (
        "step schedule: comma-separated optimizer steps at which tau is multiplied by penal_gamma, e.g. '100,200'.")})
    penal_gamma: float = dataclasses.field(default=0.1, metadata={"help": (
        "step schedule: factor applied to tau at each milestone.")})
    penal_depth_profile: str = dataclasses.field(default="uniform", metadata={"help": (
        f"tau across depth: {' | '.join(DEPTH_PROFILES)} (linear in the layer index, 0 to 1, like timm's drop-path "
        "rate)."), "choices": list(DEPTH_PROFILES)})
    penal_log_efficiency: bool = dataclasses.field(default=False, metadata={"help": (
        "Log the per-layer Markov efficiency and mean |z| every logging_steps (one dot product and two norms per "
        "site in backward; off: no extra work).")})

    def __post_init__(self):
        _validate(self)
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:  # TrainingArguments, in PenalTrainingArguments
            parent()


@dataclasses.dataclass
class PenalTrainingArguments(_PenalSettings, TrainingArguments):
    """`TrainingArguments` plus the penal connection settings (all ``penal_*``; see the field help texts).

    ``penal_tau`` / ``penal_tau_ratio`` / ``penal_sites`` / ``penal_storage_dtype`` left at None take the model's
    own ``config.penal`` (or the defaults: τ calibrated per site, all sites, z kept in its own dtype); when set they
    override it.
    """


_FIELDS = {f.name: f.default for f in dataclasses.fields(_PenalSettings)}


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _validate(s: Any) -> None:
    """Check and normalise the penal fields of `s` in place (ValueError naming the field)."""
    def bad(name, allowed):
        raise ValueError(f"PenalTrainingArguments field '{name}' must be {allowed}; got {getattr(s, name)!r}")

    if not isinstance(s.penal, bool):
        bad("penal", "True or False")
    if s.penal_tau is not None:
        s.penal_tau = check_tau(s.penal_tau, "PenalTrainingArguments field 'penal_tau'")
    if s.penal_tau_ratio is not None:
        try:
            PenalConfig(tau_ratio=s.penal_tau_ratio)
        except ValueError:
            bad("penal_tau_ratio", "None or a finite number > 0 (e.g. 0.03)")
    if s.penal_sites is not None:
        try:
            PenalConfig(sites=s.penal_sites)
        except ValueError as e:
            raise ValueError(f"PenalTrainingArguments field 'penal_sites': {e}") from None
    if s.penal_storage_dtype is not None:
        try:
            s.penal_storage_dtype = PenalConfig(storage_dtype=s.penal_storage_dtype).storage_dtype
        except ValueError:
            bad("penal_storage_dtype", f"None or one of {list(STORAGE_NAMES)}")
    try:  # the schedule validates its own fields; here they only get their argument names
        schedule = TauSchedule(name=s.penal_schedule, final_tau=s.penal_final_tau, warmup_steps=s.penal_warmup_steps,
                               warmup_ratio=s.penal_warmup_ratio, milestones=s.penal_milestones, gamma=s.penal_gamma,
                               depth_profile=s.penal_depth_profile)
    except ScheduleFieldError as e:
        bad("penal_schedule" if e.field == "name" else f"penal_{e.field}", e.allowed)
    # one JSON-friendly, parser-friendly form
    s.penal_milestones = ",".join(map(str, schedule.milestones)) if schedule.milestones else None
    if not isinstance(s.penal_log_efficiency, bool):
        bad("penal_log_efficiency", "True or False")


def _settings_from(args: TrainingArguments | None, overrides: dict) -> _PenalSettings:
    unknown = sorted(k for k in overrides if k not in _FIELDS and f"penal_{k}" not in _FIELDS)
    if unknown:
        raise TypeError(f"PenalCallback got unknown setting(s) {unknown}; allowed: {sorted(_FIELDS)} "
                        f"(or the same without the 'penal_' prefix)")
    values = {k: getattr(args, k, d) for k, d in _FIELDS.items()}
    values.update({k if k in _FIELDS else f"penal_{k}": v for k, v in overrides.items()})
    return _PenalSettings(**values)


# ------------------------------------------------------------------------------------------------------------ callback
def _scale_of(scaler: Any) -> torch.Tensor | float | None:
    """Current loss scale of a GradScaler as a tensor (no device sync); None when there is no enabled scaler."""
    if scaler is None or not getattr(scaler, "is_enabled", lambda: True)():
        return None
    scale = getattr(scaler, "_scale", None)
    if scale is None:  # created lazily by the first scaler.scale(loss): the first step uses the initial scale
        return float(getattr(scaler, "_init_scale", 1.0))
    return scale


class PenalCallback(TrainerCallback):
    """Drives the penal connections during `Trainer.train`: τ schedule, loss-scale/world-size gain, logging.

    Args:
        args: a `PenalTrainingArguments` to take the penal settings from (optional).
        **settings: penal settings by field name (``penal_tau=3e-4``, ``penal_schedule="cosine"``, ...; the short
            forms ``tau=``, ``schedule=`` work too); they override `args`.

    With a plain Trainer, register it with ``PenalCallback(...).attach(trainer)``: that reads the Trainer's GradScaler
    and puts the callback ahead of the ``report_to`` callbacks so the penal metrics reach them (a callback passed in
    ``callbacks=[...]`` without `attach` works, and warns about what it cannot do). At train begin it gives the model
    penal connections when it has none. With no settings, a `PenalTrainingArguments` given to the Trainer is used.
    At train end it writes ``trainer_state.json`` (the log history ``hf-penal plot`` reads) to ``output_dir`` on the
    main process, even with ``save_strategy="no"``.
    """

    def __init__(self, args: TrainingArguments | None = None, **settings):
        self._explicit = args is not None or bool(settings)
        self.settings = _settings_from(args, settings)
        self._trainer_ref: weakref.ref | None = None
        self._prepared: weakref.ref | None = None
        self._peak: float | str = 0.0
        self._schedule: TauSchedule | None = None
        self._depth: list = []
        self._rel: float | None = None
        self._sync_pending = False
        self._resume_dir: str | None = None
        self._world = 1
        self._logs_via_trainer = False
        self._probe_only = False

    # -------------------------------------------------------------------------------------------- setup
    def attach(self, trainer: Trainer) -> PenalCallback:
        """Register with `trainer` (ahead of its reporting callbacks) and read its GradScaler from now on."""
        cbs = trainer.callback_handler.callbacks
        if self in cbs:
            cbs.remove(self)
        at = next((i + 1 for i, c in enumerate(cbs) if isinstance(c, DefaultFlowCallback)), 0)
        cbs.insert(at, self)  # before report_to callbacks: metrics added in on_log reach them
        self._trainer_ref = weakref.ref(trainer)
        return self

    def prepare(self, model: nn.Module) -> PenalConfig | None:
        """Give `model` the penal connections these settings ask for (idempotent); returns the active config.

        A model without connections gets them from the settings, or from its own ``config.penal``; settings that are
        not None override the model's (logged). ``penal=False`` removes existing connections (a plain baseline) and,
        with ``penal_log_efficiency``, adds τ = 0 probes that measure without penalizing.
        """
        if self._prepared is not None and self._prepared() is model:
            return surgery.penal_config(model)
        s = self.settings
        root = surgery.penalized_root(model)
        active = surgery.penal_config(root)
        saved = persistence.saved_settings(root) if active is None else None
        self._probe_only = False
        if not s.penal:
            if active is not None:
                logger.warning("hf_penal: penal=False: removing the model's penal connections (plain baseline)")
                surgery.remove(root)
            if s.penal_log_efficiency:
                surgery.attach_probes(root, sites=s.penal_sites or "all")
                self._probe_only = True
                logger.info("hf_penal: penal=False with penal_log_efficiency: tau=0 probes measure the efficiency")
        else:
            given = {k: v for k, v in (("tau", s.penal_tau), ("tau_ratio", s.penal_tau_ratio),
                                       ("sites", s.penal_sites), ("storage_dtype", s.penal_storage_dtype))
                     if v is not None}
            if active is not None or isinstance(saved, dict):
                base = active if active is not None else PenalConfig.from_dict(saved)
                changed = {k: v for k, v in given.items() if getattr(base, k) != v}
                if changed:
                    logger.info(f"hf_penal: training arguments override the model's penal settings {changed}")
                if active is None or set(changed) - {"tau"}:
                    surgery.apply(root, base, **changed)  # a new strength calibrates again
                elif changed:
                    surgery.set_tau(root, changed["tau"])
            else:
                surgery.apply(root, **given)
        cfg = surgery.penal_config(root)
        self._peak = 0.0 if cfg is None or self._probe_only else cfg.tau
        final = s.penal_final_tau if self._peak == "auto" else (s.penal_final_tau / self._peak if self._peak else 0.0)
        # the schedule is relative (peak 1): it multiplies each site's τ_l, fixed or calibrated
        self._schedule = TauSchedule(name=s.penal_schedule, tau=1.0, final_tau=final,
                                     warmup_steps=s.penal_warmup_steps, warmup_ratio=s.penal_warmup_ratio,
                                     milestones=parse_milestones(s.penal_milestones), gamma=s.penal_gamma,
                                     depth_profile=s.penal_depth_profile)
        pairs = surgery.connections(root)
        self._depth = surgery.depth_factors(root, self._schedule.depth_profile)
        self._sync_pending = self._peak == "auto" and any(not c.calibrated for _, c in pairs)
        self._prepared = weakref.ref(model)
        return cfg

    def _pairs(self, model: nn.Module) -> list:
        return surgery.connections(model)

    def tau_now(self, model: nn.Module) -> dict[str, float]:
        """τ of the step just finished: ``penal/tau`` (the configured τ × schedule; with ``tau="auto"`` the mean over
        sites of τ_l × schedule) and, with ``tau="auto"``, ``penal/tau/layer_NN`` (mean over the layer's sites)."""
        pairs = self._pairs(model)
        if self._rel is None or not pairs:
            return {}
        if self._peak != "auto":
            return {TAU_KEY: self._peak * self._rel}
        per_layer: dict[int, list] = {}
        for (site, conn), d in zip(pairs, self._depth):
            per_layer.setdefault(site.depth, []).append(conn.tau.item() * self._rel * d)
        width = max(2, len(str(max(max(per_layer), 1))))
        out = {TAU_KEY: sum(sum(v) for v in per_layer.values()) / sum(len(v) for v in per_layer.values())}
        out.update({f"{TAU_KEY}/layer_{k:0{width}d}": sum(v) / len(v) for k, v in sorted(per_layer.items())})
        return out

    # -------------------------------------------------------------------------------------------- events
    def on_init_end(self, args, state, control, **kwargs):
        if not self._explicit and isinstance(args, PenalTrainingArguments):
            self.settings = _settings_from(args, {})

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self._explicit and isinstance(args, PenalTrainingArguments):
            self.settings = _settings_from(args, {})
        if self._trainer_ref is None or self._trainer_ref() is None:
            logger.warning("hf_penal: PenalCallback is not attached to its Trainer: call "
                           "PenalCallback(...).attach(trainer) (PenalTrainer does it for you). Without it the penalty "
                           "does not follow an fp16 GradScaler's loss scale, and report_to callbacks listed before it "
                           "do not receive the penal/* metrics.")
        if model is None:
            return
        self.prepare(model)
        pairs = self._pairs(model)
        if self.settings.penal_log_efficiency and pairs:
            track_efficiency(model, True)
        self._world = max(1, int(getattr(args, "world_size", 1) or 1))
        self._rel = None
        if state.global_step > 0 and self._peak == "auto":  # resumed: the calibration of the run, not a new one
            folder = self._resume_dir or os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            self._restore_calibration(model, folder)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if model is None or self._schedule is None:
            return
        root = surgery.penalized_root(model)  # once per step: a wrapped model (DDP) is searched
        if not surgery.connections(root):
            return
        if self._sync_pending and state.global_step > 0:  # step 0's first backward calibrated
            sync_calibration(root)  # every rank: the τ_l of the global batch
            self._sync_pending = False
        rel = self._schedule(state.global_step, state.max_steps)
        surgery.set_tau_factor(root, rel, self._schedule.depth_profile)
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        scale = _scale_of(getattr(getattr(trainer, "accelerator", None), "scaler", None))
        surgery.set_loss_scale(root, 1.0 if scale is None else scale, self._world)
        self._rel = rel

    def metrics(self, model: nn.Module, reset: bool = True) -> dict[str, float]:
        """The penal log entries now: ``penal/tau`` (τ of the step just finished; per layer with ``tau="auto"``)
        and, when measured, the efficiency."""
        if self._schedule is None:
            return {}
        out = self.tau_now(model)
        if self.settings.penal_log_efficiency:
            out.update(efficiency_metrics(model, reset=reset))
        return out

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        if self._logs_via_trainer or model is None or logs is None or not _is_train_row(logs):
            return
        extra = self.metrics(model)
        logs.update(extra)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)

    def on_save(self, args, state, control, model=None, **kwargs):
        """Keep the calibrated τ_l in the checkpoint folder, so a resumed run continues with them exactly."""
        if model is None or self._peak != "auto" or not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        taus = calibrated_taus(model)
        if taus and os.path.isdir(folder):
            with open(os.path.join(folder, CALIBRATION_FILE), "w") as f:
                json.dump(taus, f, indent=1)

    def _restore_calibration(self, model: nn.Module, folder: str) -> None:
        path = os.path.join(folder, CALIBRATION_FILE)
        if not os.path.isfile(path):
            logger.warning(f"hf_penal: resuming without {path}: tau='auto' calibrates again on this run's first step")
            return
        with open(path) as f:
            surgery.restore_calibration(model, json.load(f))
        self._sync_pending = False

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:  # the log history `hf-penal plot` reads, with any Trainer and save_strategy
            os.makedirs(args.output_dir, exist_ok=True)
            state.save_to_json(os.path.join(args.output_dir, "trainer_state.json"))
        if model is None or self._schedule is None:
            return
        root = surgery.penalized_root(model)
        if not surgery.connections(root):
            return
        if self.settings.penal_log_efficiency:
            track_efficiency(root, False)
        # leave the model as configured: schedule factor 1, unit gain; calibrated τ_l stay
        surgery.set_tau_factor(root, 1.0)
        surgery.set_loss_scale(root, 1.0)
        surgery.record_settings(root)


def _is_train_row(logs: dict) -> bool:
    return not any(k.startswith(("eval_", "test_", "predict_")) for k in logs)


# ------------------------------------------------------------------------------------------------------------ trainer
class PenalTrainer(Trainer):
    """`Trainer` with penal connections: applies them from the ``penal_*`` arguments to a model that has none (or
    uses the model's own ``config.penal``; arguments that are set override it), adds a `PenalCallback`, and logs
    ``penal/tau`` and the efficiency metrics through `Trainer.log` (so ``log_history`` and the ``report_to``
    back-ends get them). ``args`` may be a `PenalTrainingArguments` or a plain `TrainingArguments` (penal
    defaults)."""

    def __init__(self, model: nn.Module | None = None, args: TrainingArguments | None = None, *pos, **kwargs):
        if args is None:
            args = PenalTrainingArguments(output_dir="trainer_output")
        self.penal_callback = PenalCallback(args)
        if model is not None:
            self.penal_callback.prepare(model)  # before the Trainer moves / compiles / wraps the model
        super().__init__(model, args, *pos, **kwargs)
        self.penal_callback.attach(self)
        self.penal_callback._logs_via_trainer = True

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        self.penal_callback._resume_dir = resume_from_checkpoint  # its calibration file, read at train begin
        return super()._load_from_checkpoint(resume_from_checkpoint, model)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model is not None and _is_train_row(logs):
            logs = {**logs, **self.penal_callback.metrics(self.model)}
        super().log(logs, start_time)
