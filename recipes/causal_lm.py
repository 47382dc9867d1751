"""Train a causal language model (GPT-2 / Llama style) with penal connections.

    python recipes/causal_lm.py --output_dir outputs/causal_lm
    accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml recipes/causal_lm.py ...

Model: --model_name_or_path (a transformers causal LM: local dir or hub id), or --model_config gpt2-tiny | gpt2-mini
| llama-tiny | llama-mini (default gpt2-mini), built from scratch with a word-level tokenizer over the training data.
Data: --dataset_name or --train_file with a --text_column, one example per row, truncated to --max_seq_length
tokens; default: generated arithmetic progressions (``12 19 26 33 40 ...``): after the first two numbers every token
is determined, so a perplexity far below the vocabulary size means the model learned the rule.
Metrics: perplexity (exp of the eval loss) and next-token accuracy.
"""
from __future__ import annotations

import dataclasses
import math
import random

import _common
import datasets
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, GPT2Config, LlamaConfig

from hf_penal import PenalTrainer

CONFIGS = {  # --model_config: small decoders trained from scratch
    "gpt2-tiny": (GPT2Config, dict(n_embd=32, n_layer=2, n_head=2, n_positions=128)),
    "gpt2-mini": (GPT2Config, dict(n_embd=128, n_layer=4, n_head=4, n_positions=128)),
    "llama-tiny": (LlamaConfig, dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)),
    "llama-mini": (LlamaConfig, dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)),
}


@dataclasses.dataclass
class LMArguments:
    text_column: str = "text"
    num_examples: int = dataclasses.field(default=4000, metadata={"help": "Size of the generated corpus."})
    dropout: float = dataclasses.field(default=0.1, metadata={"help": "Dropout of from-scratch models."})


def arithmetic_progressions(num_examples: int, seed: int = 0) -> datasets.DatasetDict:
    """Lines of 8-16 numbers a, a+d, a+2d, ... with a in [0, 50) and d in [1, 10)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(num_examples):
        a, d, n = rng.randrange(50), rng.randrange(1, 10), rng.randrange(8, 17)
        lines.append(" ".join(str(a + i * d) for i in range(n)))
    return datasets.DatasetDict(train=datasets.Dataset.from_dict({"text": lines}))


def main(argv=None) -> dict:
    model_args, data_args, lm_args, training_args = _common.parse_args(
        LMArguments, argv=argv, output_dir="outputs/causal_lm", learning_rate=2e-3, per_device_train_batch_size=32,
        per_device_eval_batch_size=64, num_train_epochs=3, max_seq_length=64, warmup_steps=20,
        average_tokens_across_devices=True)  # the LM loss is a token sum / global token count: exact across ranks
    raw = _common.load_splits(data_args, lambda: arithmetic_progressions(lm_args.num_examples),
                              seed=training_args.seed)
    column = lm_args.text_column

    if model_args.model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
    else:
        tokenizer = (AutoTokenizer.from_pretrained(model_args.tokenizer_name) if model_args.tokenizer_name else
                     _common.word_tokenizer(list(raw["train"][column]), pad_token="<pad>", eos_token="</s>"))
        config_class, sizes = CONFIGS[model_args.model_config or "gpt2-mini"]
        dropout = (dict(resid_pdrop=lm_args.dropout, embd_pdrop=lm_args.dropout, attn_pdrop=lm_args.dropout)
                   if config_class is GPT2Config else dict(attention_dropout=lm_args.dropout))
        config = config_class(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                              **sizes, **dropout)
        model = AutoModelForCausalLM.from_config(config)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def preprocess(batch):
        return tokenizer(batch[column], truncation=True, max_length=data_args.max_seq_length)

    with training_args.main_process_first(desc="tokenize"):
        data = raw.map(preprocess, batched=True, remove_columns=raw["train"].column_names)

    accuracy = _common.load_metric("accuracy")

    def compute_metrics(pred):  # predictions: argmax ids (see preprocess_logits_for_metrics); position t predicts t+1
        return accuracy.compute(predictions=pred.predictions[:, :-1].reshape(-1),
                                references=pred.label_ids[:, 1:].reshape(-1))

    trainer = PenalTrainer(model=model, args=training_args, train_dataset=data["train"],
                           eval_dataset=data["validation"], processing_class=tokenizer,
                           data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                           compute_metrics=compute_metrics,
                           preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1))
    return _common.train_and_report(
        trainer, training_args, "causal_lm", tokenizer=tokenizer,
        derived=lambda m: {"eval_perplexity": math.exp(min(m["eval_loss"], 50.0))},
        extra={"vocab_size": len(tokenizer)})


if __name__ == "__main__":
    main()
