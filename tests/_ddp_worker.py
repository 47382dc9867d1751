"""Run by test_robustness under `accelerate launch --multi_gpu --num_processes 2` (CPU, gloo): each rank trains a
penalized tiny BERT on its half of a global batch through DDP (accelerate) or FSDP2 (`fully_shard`) and saves its
gradients and the single-process oracle's (vanilla model, full batch, explicit penalty) for the test to compare."""
import json
import os
import sys

import torch
from accelerate import Accelerator

sys.path.insert(0, os.path.dirname(__file__))
from _models import two_rank_bert_case  # noqa: E402

import hf_penal  # noqa: E402

TAU = 1e-2


def main(out_dir, mode):
    acc = Accelerator(cpu=True)
    _, model, _, local, g_oracle = two_rank_bert_case(acc.num_processes, acc.process_index, TAU)
    hf_penal.set_loss_scale(model, 1.0, world_size=acc.num_processes)  # DDP averages over ranks
    if mode == "fsdp":  # FSDP2 on gloo: shard each layer and the root; gradients are reduce-scattered (averaged)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        mesh = init_device_mesh("cpu", (acc.num_processes,))
        for layer in model.bert.encoder.layer:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        ddp = model
        ddp.train()
        ddp(**local).loss.backward()
        g_ddp = {n: p.grad.full_tensor().detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        wrapped = "FSDP" in type(model).__name__
    else:
        ddp = acc.prepare(model)
        ddp.train()
        acc.backward(ddp(**local).loss)
        unwrapped = acc.unwrap_model(ddp)
        g_ddp = {n: p.grad.detach().clone() for n, p in unwrapped.named_parameters() if p.grad is not None}
        wrapped = "DistributedDataParallel" in type(ddp).__name__
    torch.save({"ddp": g_ddp, "oracle": {k: v for k, v in g_oracle.items() if k in g_ddp}},
               os.path.join(out_dir, f"rank{acc.process_index}.pt"))
    with open(os.path.join(out_dir, f"rank{acc.process_index}.json"), "w") as f:
        json.dump(dict(world=acc.num_processes, rank=acc.process_index,
                       wrapped=wrapped, sites=len(hf_penal.sites(model))), f)

    # leave the process group before exiting: gloo threads still alive at interpreter exit can abort a rank
    # ("terminate called without an active exception"), seen once on a clean-clone run
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
