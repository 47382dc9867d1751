"""Run by test_recipes under `accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml`: joins the 2-rank gloo
group, reports its rendezvous port, and holds the group (so its port stays bound) until the file `release` exists."""
import os
import sys
import time

import torch
import torch.distributed as dist


def main(ready: str, release: str):
    dist.init_process_group("gloo")
    t = torch.ones(1)
    dist.all_reduce(t)
    rank = dist.get_rank()
    print(f"rank {rank}/{dist.get_world_size()} port {os.environ['MASTER_PORT']} sum {t.item():g}", flush=True)
    if rank == 0:
        open(ready, "w").close()
    while not os.path.exists(release):
        time.sleep(0.1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
