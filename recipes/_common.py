"""What the four recipes share: argument groups, data loading, local metrics, the final report.

Every recipe parses ``(ModelArguments, DataArguments, PenalTrainingArguments)`` (plus, for some, one small task
dataclass) with `parse_args`, loads its data with `load_splits`, trains with `hf_penal.PenalTrainer` and ends with
`finish`, which evaluates, prints the final metrics table, writes ``<output_dir>/metrics.json`` and saves the model
with ``save_pretrained`` (``config.json`` keeps the penal settings, so ``from_pretrained(output_dir)`` restores them).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent
METRICS_DIR = RECIPES_DIR / "metrics"
sys.path.insert(0, str(RECIPES_DIR.parent))  # `python recipes/x.py` from a source checkout without `pip install -e`

import datasets  # noqa: E402
import evaluate  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402

import hf_penal  # noqa: E402  (installs from_pretrained(..., penal=...) and timm.create_model(..., penal=...))
from hf_penal import PenalTrainingArguments  # noqa: E402


@dataclasses.dataclass
class ModelArguments:
    model_name_or_path: str | None = dataclasses.field(
        default=None, metadata={"help": "Local directory or hub id of a pretrained model. Without it (or with "
                                        "--model_config) the recipe builds a small model from a named config."})
    model_config: str | None = dataclasses.field(
        default=None, metadata={"help": "Name of a small from-scratch config (each recipe lists its names)."})
    tokenizer_name: str | None = dataclasses.field(
        default=None, metadata={"help": "Tokenizer directory or hub id (default: the model's)."})


@dataclasses.dataclass
class DataArguments:
    dataset_name: str | None = dataclasses.field(
        default=None, metadata={"help": "Hub dataset id (needs the network). Without it and without --train_file "
                                        "the recipe's embedded offline default is used."})
    dataset_config_name: str | None = None
    train_file: str | None = dataclasses.field(
        default=None, metadata={"help": "csv / json / jsonl file, or an image folder (class-named subfolders)."})
    validation_file: str | None = None
    validation_split_percentage: int = dataclasses.field(
        default=20, metadata={"help": "Held-out share of the training data when no validation split is given."})
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_seq_length: int = dataclasses.field(default=128, metadata={"help": "Token budget per example (text tasks)."})


def parse_args(*extra, argv: list[str] | None = None, training_class=PenalTrainingArguments, **defaults):
    """Parse (ModelArguments, DataArguments, *extra, training_class) from `argv` (default: sys.argv).

    `defaults` are the recipe's own defaults for any of these fields (e.g. ``learning_rate=5e-5``); the command line
    overrides them. On a machine without CUDA the run uses the CPU (``use_cpu``), which is also what makes
    ``accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml`` start a real 2-rank gloo group.
    """
    parser = HfArgumentParser((ModelArguments, DataArguments, *extra, training_class))
    # average_tokens_across_devices: Trainer then multiplies the loss by the world size, which is right only for
    # models whose loss divides a sum by the global item count (causal LMs); for classification and T5 losses (means)
    # it doubles loss and gradients on 2 ranks. Off here; causal_lm.py turns it back on.
    base = dict(report_to="none", eval_strategy="epoch", save_strategy="epoch", save_total_limit=2,
                logging_steps=10, seed=42, use_cpu=not torch.cuda.is_available(), average_tokens_across_devices=False)
    parser.set_defaults(**{**base, **defaults})
    args = parser.parse_args_into_dataclasses(args=argv)
    training_args = args[-1]
    if training_args.resume_from_checkpoint in ("last", "true", "True"):
        last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if last is None:
            raise SystemExit(f"--resume_from_checkpoint {training_args.resume_from_checkpoint}: no checkpoint-* "
                             f"folder in {training_args.output_dir}")
        training_args.resume_from_checkpoint = last
    datasets.utils.logging.set_verbosity_error()
    if not os.environ.get("TRANSFORMERS_VERBOSITY"):  # scripts/main_job.sh asks for errors only
        transformers.utils.logging.set_verbosity_warning()
    transformers.set_seed(training_args.seed)  # before the model is built: the same initial weights in every arm
    print(f"[rank {training_args.process_index}/{training_args.world_size}] device={training_args.device} "
          f"penal={training_args.penal} tau={training_args.penal_tau} schedule={training_args.penal_schedule}",
          flush=True)
    return args


# ------------------------------------------------------------------------------------------------------------- data
def load_splits(data_args: DataArguments, embedded: Callable[[], datasets.DatasetDict], seed: int = 42,
                stratify: str | None = None) -> datasets.DatasetDict:
    """`train` and `validation` splits from --dataset_name, --train_file/--validation_file or `embedded()`.

    Files: .csv, .json / .jsonl (one record per line) or a directory (loaded as an ``imagefolder``). A missing
    validation split is cut from train (--validation_split_percentage, stratified on `stratify` when it is a
    ClassLabel column). --max_train_samples / --max_eval_samples keep the first N rows (after a seeded shuffle).
    """
    if data_args.dataset_name:
        raw = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    elif data_args.train_file:
        raw = _load_files(data_args.train_file, data_args.validation_file)
    else:
        raw = embedded()
    if "validation" not in raw:
        for name in ("valid", "test"):
            if name in raw:
                raw["validation"] = raw[name]
                break
    if "validation" not in raw:
        train = raw["train"]
        can_stratify = stratify and isinstance(train.features.get(stratify), datasets.ClassLabel)
        cut = train.train_test_split(test_size=data_args.validation_split_percentage / 100, seed=seed,
                                     stratify_by_column=stratify if can_stratify else None)
        raw = datasets.DatasetDict(train=cut["train"], validation=cut["test"])
    splits = datasets.DatasetDict(train=raw["train"], validation=raw["validation"])
    for split, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if limit is not None and limit < len(splits[split]):
            splits[split] = splits[split].shuffle(seed=seed).select(range(limit))
    return splits


def class_labels(splits: datasets.DatasetDict, column: str) -> tuple[list[str], dict | None]:
    """Class names of a label column and a map from raw label (as str) to id, None when the column is a ClassLabel
    (already ids). Plain ints keep numeric order; strings are sorted."""
    feature = splits["train"].features[column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names), None
    values = {v for split in splits.values() for v in split[column]}
    names = [str(v) for v in sorted(values)]
    return names, {n: i for i, n in enumerate(names)}


def _load_files(train_file: str, validation_file: str | None) -> datasets.DatasetDict:
    if os.path.isdir(train_file):
        data_files = {"train": os.path.join(train_file, "**")}
        if validation_file:
            data_files["validation"] = os.path.join(validation_file, "**")
        return datasets.load_dataset("imagefolder", data_files=data_files)
    data_files = {"train": train_file, **({"validation": validation_file} if validation_file else {})}
    ext = train_file.rsplit(".", 1)[-1].lower()
    builder = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json"}.get(ext)
    if builder is None:
        raise SystemExit(f"--train_file {train_file!r}: expected .csv, .json, .jsonl or an image folder")
    kwargs = {"delimiter": "\t"} if ext == "tsv" else {}
    return datasets.load_dataset(builder, data_files=data_files, **kwargs)


def word_tokenizer(texts, model_max_length: int = 512, **special) -> transformers.PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over `texts` (for the generated corpora; saved with the model).

    special: token roles, e.g. ``pad_token="<pad>", eos_token="</s>"``; ``unk_token`` defaults to ``"<unk>"``.
    With an ``eos_token``, every encoded text ends with it (so that models learn where a sequence stops).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: PLC0415

    special = {"unk_token": "<unk>", **special}
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(special.values()))}
    for text in texts:
        for word in text.split():
            vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=special["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if "eos_token" in special:
        eos = special["eos_token"]
        tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, vocab[eos])])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **special)


def load_metric(name: str):
    """`evaluate.load` of a metric module shipped in recipes/metrics/ (works offline)."""
    return evaluate.load(str(METRICS_DIR / name))


def classification_metrics() -> Callable:
    """`compute_metrics` for classification recipes: accuracy and macro-F1 from the local metric modules."""
    import numpy as np

    accuracy, f1 = load_metric("accuracy"), load_metric("f1")

    def compute_metrics(pred):
        predictions = np.argmax(pred.predictions, axis=-1)
        return {**accuracy.compute(predictions=predictions, references=pred.label_ids),
                "macro_f1": f1.compute(predictions=predictions, references=pred.label_ids, average="macro")["f1"]}

    return compute_metrics


# ----------------------------------------------------------------------------------------------------------- report
def train_and_report(trainer, training_args, task: str, extra: dict | None = None,
                     tokenizer=None, derived: Callable[[dict], dict] | None = None) -> dict:
    """Train (resuming from --resume_from_checkpoint), evaluate, save; print and write the final metrics.

    derived: maps the eval metrics to extra ones (e.g. perplexity from the loss). Returns the metrics dict that
    ``<output_dir>/metrics.json`` holds.
    """
    start = time.perf_counter()
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    train_seconds = time.perf_counter() - start
    eval_metrics = trainer.evaluate()
    if derived:
        eval_metrics.update(derived(eval_metrics))
    trainer.save_model()  # save_pretrained: config.json carries the penal settings
    if tokenizer is not None and trainer.is_world_process_zero():
        tokenizer.save_pretrained(training_args.output_dir)
    metrics = {
        "task": task,
        "penal": training_args.penal,
        "penal_config": _penal_settings(trainer.model) if training_args.penal else None,
        "penal_schedule": training_args.penal_schedule if training_args.penal else None,
        "world_size": training_args.world_size,
        "learning_rate": training_args.learning_rate,
        "warmup_steps": training_args.warmup_steps,
        "train_samples": len(trainer.train_dataset),
        "eval_samples": len(trainer.eval_dataset),
        "global_step": trainer.state.global_step,
        "train_loss": train_result.training_loss,
        "train_seconds": round(train_seconds, 2),
        **{k: v for k, v in eval_metrics.items() if k.startswith("eval_") or k == "epoch"},
    }
    efficiency = mean_efficiency(trainer.state.log_history)
    if efficiency is not None:
        metrics["mean_efficiency"] = efficiency
    metrics.update(extra or {})
    if trainer.is_world_process_zero():
        Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(training_args.output_dir) / "metrics.json", "w") as f:
            json.dump(metrics, f, indent=2, default=str)
        print_table(f"{task}: final metrics ({training_args.output_dir})", metrics)
    return metrics


def _penal_settings(model) -> dict | None:
    cfg = hf_penal.penal_config(model)  # the model as the Trainer holds it (DDP-wrapped on 2 ranks)
    return cfg.to_dict() if cfg is not None else None


def mean_efficiency(log_history: list[dict]) -> float | None:
    """The chain's Markov efficiency ε (``penal/efficiency``, the mean over layers) averaged over all training log
    rows; None when it was not logged (--penal_log_efficiency off)."""
    vals = [row["penal/efficiency"] for row in log_history if isinstance(row.get("penal/efficiency"), (int, float))]
    vals = [v for v in vals if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items() if k in ("tau", "sites", "mode", "storage_dtype"))
    return "-" if value is None else str(value)


def print_table(title: str, rows: dict) -> None:
    width = max(len(k) for k in rows)
    print(f"\n{title}\n" + "-" * (width + 30))
    for key, value in rows.items():
        print(f"{key:<{width}}  {fmt(value)}")
    print("-" * (width + 30), flush=True)
