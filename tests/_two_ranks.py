"""Run a test worker script on two CPU ranks (``accelerate launch --multi_gpu --num_processes 2``; gloo) and read the
per-rank JSON records it writes to ``<out_dir>/rank<i>.json``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def launch_two_ranks(worker: str, out_dir: Path, *args: str) -> list[dict]:
    """Launch ``tests/<worker>`` on two ranks with `out_dir` and `args` as its arguments (fails the test on a non-zero
    exit, with the end of stderr); the two ranks' JSON records, rank 0 first. The rendezvous port is 0 (a free port
    each launch, as in the shipped accelerate file), so concurrent test runs do not collide."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           str(ROOT / "tests" / worker), str(out_dir), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads((Path(out_dir) / f"rank{i}.json").read_text()) for i in range(2)]
