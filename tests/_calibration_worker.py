"""Run by test_calibration under `accelerate launch --multi_gpu --num_processes 2` (CPU, gloo): each rank calibrates
a tau="auto" tiny BERT on its half of a global batch through DDP, synchronises, and writes its τ_l next to those of a
single process that calibrates on the whole batch."""
import copy
import json
import os
import sys

import torch
from accelerate import Accelerator

sys.path.insert(0, os.path.dirname(__file__))
from _models import build  # noqa: E402

import hf_penal  # noqa: E402
from hf_penal.calibration import calibrated_taus, sync_calibration  # noqa: E402


def main(out_dir):
    acc = Accelerator(cpu=True)
    cfg, auto, _ = build("bert")
    torch.manual_seed(0)
    vanilla = auto.from_config(cfg)
    g = torch.Generator().manual_seed(0)
    batch = dict(input_ids=torch.randint(3, 100, (8, 8), generator=g), labels=torch.randint(0, 3, (8,), generator=g))

    single = hf_penal.apply(copy.deepcopy(vanilla), tau="auto", tau_ratio=0.1)
    single.train()
    single(**batch).loss.backward()

    model = hf_penal.apply(copy.deepcopy(vanilla), tau="auto", tau_ratio=0.1)
    hf_penal.set_loss_scale(model, 1.0, world_size=acc.num_processes)
    half = 8 // acc.num_processes
    sl = slice(acc.process_index * half, (acc.process_index + 1) * half)
    ddp = acc.prepare(model)
    ddp.train()
    acc.backward(ddp(**{k: v[sl] for k, v in batch.items()}).loss)
    local = calibrated_taus(model)
    synced = sync_calibration(model)
    taus = calibrated_taus(model)
    with open(os.path.join(out_dir, f"rank{acc.process_index}.json"), "w") as f:
        json.dump(dict(world=acc.num_processes, synced=synced, taus=taus, single=calibrated_taus(single),
                       local_differs=any(abs(local[k] - taus[k]) > 1e-9 * abs(taus[k]) for k in taus)), f)


if __name__ == "__main__":
    main(sys.argv[1])
