"""Run by test_wrappers under `accelerate launch --multi_gpu --num_processes 2` (CPU, gloo): each rank wraps a
penalized tiny BERT in DDP, trains one step on its half of a global batch with ``set_loss_scale(ddp_model, 1.0,
world_size=2)`` given the *wrapped* model (its gradients must equal the single-process oracle's), then calls every
public function on the DDP model (`_wrapper_checks.exercise`) and writes the record."""
import copy
import json
import os
import sys

import torch
from accelerate import Accelerator

sys.path.insert(0, os.path.dirname(__file__))
from _models import build  # noqa: E402
from _oracle import grads, rel_err  # noqa: E402
from _wrapper_checks import TAU, exercise  # noqa: E402

import hf_penal  # noqa: E402


def main(out_dir):
    acc = Accelerator(cpu=True)
    cfg, auto, _ = build("bert")
    torch.manual_seed(0)
    vanilla = auto.from_config(cfg)
    model = hf_penal.apply(copy.deepcopy(vanilla), tau=TAU)
    g = torch.Generator().manual_seed(0)
    batch = dict(input_ids=torch.randint(3, 100, (8, 8), generator=g), labels=torch.randint(0, 3, (8,), generator=g))
    zspec = [(r"bert\.encoder\.layer\.\d+\.(attention\.)?output\.dropout", None)]
    g_oracle, _, _ = grads(vanilla, lambda m: m(**batch).loss, zspec, TAU)

    half = 8 // acc.num_processes
    local = {k: v[acc.process_index * half:(acc.process_index + 1) * half] for k, v in batch.items()}
    ddp = acc.prepare(model)
    hf_penal.set_loss_scale(ddp, 1.0, world_size=acc.num_processes)  # the wrapped model, as a training loop holds it
    ddp.train()
    acc.backward(ddp(**local).loss)
    g_ddp = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    err = rel_err(g_ddp, {k: v for k, v in g_oracle.items() if k in g_ddp})
    ddp.zero_grad(set_to_none=True)

    record = exercise(ddp, model, local, world=acc.num_processes)
    record.update(world=acc.num_processes, wrapped=type(ddp).__name__, grad_rel_err=err)
    with open(os.path.join(out_dir, f"rank{acc.process_index}.json"), "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main(sys.argv[1])
