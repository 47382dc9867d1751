"""Train a T5-style encoder-decoder for translation with penal connections (Seq2SeqTrainer, generated outputs).

    python recipes/translation.py --output_dir outputs/translation
    accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml recipes/translation.py ...

Model: --model_name_or_path (a transformers seq2seq model: local dir or hub id), or --model_config t5-tiny|t5-mini
(default t5-mini), a small T5 built from scratch with a word-level tokenizer built from the training data.
Data: --dataset_name or --train_file with --source_column / --target_column (strings); default: a generated
"digits → English number words" corpus (``3 0 7`` → ``three hundred seven``): a deterministic mapping with
reordering-free but context-dependent rules (teens, tens, hundreds, thousands) that a small model can learn.
Metrics: exact match and corpus BLEU-4 (whitespace tokens) of greedy generations, from recipes/metrics/seq_match.
"""
from __future__ import annotations

import dataclasses
import random

import _common
import datasets
import numpy as np
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    T5Config,
)

from hf_penal import PenalTrainer, PenalTrainingArguments

CONFIGS = {  # --model_config: small T5s trained from scratch
    "t5-tiny": dict(d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=1, num_decoder_layers=1),
    "t5-mini": dict(d_model=128, d_ff=256, d_kv=32, num_heads=4, num_layers=2, num_decoder_layers=2),
}


@dataclasses.dataclass
class PenalSeq2SeqTrainingArguments(PenalTrainingArguments, Seq2SeqTrainingArguments):
    """PenalTrainingArguments plus Seq2SeqTrainingArguments' generation fields (--predict_with_generate, ...)."""


class PenalSeq2SeqTrainer(PenalTrainer, Seq2SeqTrainer):
    """PenalTrainer's penal handling with Seq2SeqTrainer's generate-based evaluation."""


@dataclasses.dataclass
class TranslationArguments:
    source_column: str = "source"
    target_column: str = "target"
    source_prefix: str = dataclasses.field(default="", metadata={"help": "e.g. 'translate English to German: '"})
    num_examples: int = dataclasses.field(default=6000, metadata={"help": "Size of the generated corpus."})


_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
        "seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """English words for 0 <= n < 10000: 4071 → 'four thousand seventy one'."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for unit, name in ((1000, "thousand"), (100, "hundred")):
        if n >= unit:
            rest = n % unit
            return f"{_ONES[n // unit]} {name}" + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError(n)


def digits_to_words(num_examples: int, seed: int = 0) -> datasets.DatasetDict:
    """Generated pairs ``"4 0 7 1"`` → ``"four thousand seventy one"`` for distinct random n in [0, 10000)."""
    numbers = random.Random(seed).sample(range(10000), min(num_examples, 10000))
    return datasets.DatasetDict(train=datasets.Dataset.from_dict({
        "source": [" ".join(str(n)) for n in numbers], "target": [number_words(n) for n in numbers]}))


def main(argv=None) -> dict:
    model_args, data_args, tr_args, training_args = _common.parse_args(
        TranslationArguments, argv=argv, training_class=PenalSeq2SeqTrainingArguments,
        output_dir="outputs/translation", learning_rate=3e-3, per_device_train_batch_size=32,
        per_device_eval_batch_size=128, num_train_epochs=10, predict_with_generate=True, generation_max_length=16,
        generation_num_beams=1, max_seq_length=32)
    raw = _common.load_splits(data_args, lambda: digits_to_words(tr_args.num_examples), seed=training_args.seed)
    src, tgt = tr_args.source_column, tr_args.target_column

    if model_args.model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
        model = AutoModelForSeq2SeqLM.from_pretrained(model_args.model_name_or_path)
    else:
        tokenizer = (AutoTokenizer.from_pretrained(model_args.tokenizer_name) if model_args.tokenizer_name else
                     _common.word_tokenizer(list(raw["train"][src]) + list(raw["train"][tgt]), pad_token="<pad>",
                                            eos_token="</s>"))
        config = T5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
                          **CONFIGS[model_args.model_config or "t5-mini"])
        model = AutoModelForSeq2SeqLM.from_config(config)

    def preprocess(batch):
        enc = tokenizer([tr_args.source_prefix + s for s in batch[src]], truncation=True,
                        max_length=data_args.max_seq_length)
        enc["labels"] = tokenizer(text_target=batch[tgt], truncation=True,
                                  max_length=data_args.max_seq_length)["input_ids"]
        return enc

    with training_args.main_process_first(desc="tokenize"):
        data = raw.map(preprocess, batched=True, remove_columns=raw["train"].column_names)

    seq_match = _common.load_metric("seq_match")

    def compute_metrics(pred):
        preds = np.where(pred.predictions != -100, pred.predictions, tokenizer.pad_token_id)
        labels = np.where(pred.label_ids != -100, pred.label_ids, tokenizer.pad_token_id)
        decoded = tokenizer.batch_decode(preds, skip_special_tokens=True)
        refs = tokenizer.batch_decode(labels, skip_special_tokens=True)
        return seq_match.compute(predictions=decoded, references=refs)

    trainer = PenalSeq2SeqTrainer(model=model, args=training_args, train_dataset=data["train"],
                                  eval_dataset=data["validation"], processing_class=tokenizer,
                                  data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
                                  compute_metrics=compute_metrics)
    return _common.train_and_report(trainer, training_args, "translation", tokenizer=tokenizer)


if __name__ == "__main__":
    main()
