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
    # one write per line: both ranks share the launcher's stdout, and print() may write the text and its newline apart
    sys.stdout.write(f"rank {rank}/{dist.get_world_size()} port {os.environ['MASTER_PORT']} sum {t.item():g}\n")
    sys.stdout.flush()
    if rank == 0:
        open(ready, "w").close()
    while not os.path.exists(release):
        time.sleep(0.1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
