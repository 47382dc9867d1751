"""Run by test_wrappers under `accelerate launch --multi_gpu --num_processes 2` (CPU, gloo): each rank wraps a
penalized tiny BERT in DDP, trains one step on its half of a global batch with ``set_loss_scale(ddp_model, 1.0,
world_size=2)`` given the *wrapped* model (its gradients must equal the single-process oracle's), then calls every
public function on the DDP model (`_wrapper_checks.exercise`) and writes the record."""
import json
import os
import sys

from accelerate import Accelerator

sys.path.insert(0, os.path.dirname(__file__))
from _models import two_rank_bert_case  # noqa: E402
from _oracle import rel_err  # noqa: E402
from _wrapper_checks import TAU, exercise  # noqa: E402

import hf_penal  # noqa: E402


def main(out_dir):
    acc = Accelerator(cpu=True)
    _, model, _, local, g_oracle = two_rank_bert_case(acc.num_processes, acc.process_index, TAU)
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

    # leave the process group before exiting: gloo threads still alive at interpreter exit can abort a rank
    # ("terminate called without an active exception"), seen once on a clean-clone run
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
