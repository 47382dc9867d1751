"""Run by test_calibration under `accelerate launch --multi_gpu --num_processes 2` (CPU, gloo): each rank calibrates
a tau="auto" tiny BERT on its half of a global batch through DDP, synchronises, and writes its τ_l next to those of a
single process that calibrates on the whole batch."""
import copy
import json
import os
import sys

from accelerate import Accelerator

sys.path.insert(0, os.path.dirname(__file__))
from _models import two_rank_bert_case  # noqa: E402

import hf_penal  # noqa: E402
from hf_penal.calibration import calibrated_taus, sync_calibration  # noqa: E402


def main(out_dir):
    acc = Accelerator(cpu=True)
    vanilla, _, batch, half_batch, _ = two_rank_bert_case(acc.num_processes, acc.process_index)

    single = hf_penal.apply(copy.deepcopy(vanilla), tau="auto", tau_ratio=0.1)
    single.train()
    single(**batch).loss.backward()

    model = hf_penal.apply(copy.deepcopy(vanilla), tau="auto", tau_ratio=0.1)
    hf_penal.set_loss_scale(model, 1.0, world_size=acc.num_processes)
    ddp = acc.prepare(model)
    ddp.train()
    acc.backward(ddp(**half_batch).loss)
    local = calibrated_taus(model)
    synced = sync_calibration(model)
    taus = calibrated_taus(model)
    with open(os.path.join(out_dir, f"rank{acc.process_index}.json"), "w") as f:
        json.dump(dict(world=acc.num_processes, synced=synced, taus=taus, single=calibrated_taus(single),
                       local_differs=any(abs(local[k] - taus[k]) > 1e-9 * abs(taus[k]) for k in taus)), f)

    # leave the process group before exiting: gloo threads still alive at interpreter exit can abort a rank
    # ("terminate called without an active exception"), seen once on a clean-clone run
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
