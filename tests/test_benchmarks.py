"""Smoke tests of benchmarks/overhead.py and benchmarks/quality.py at their `tiny` presets (seconds, not minutes).

They run each script's `main` in this process (importing torch/transformers/timm once) and check that the markdown
tables have the rows the full runs will have, and that each script rewrites only its own section of the file.
"""
import importlib
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

pytest.importorskip("timm")


def _load(name):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def test_write_section_replaces_only_its_own_section(tmp_path):
    common = _load("_common")
    out = tmp_path / "B.md"
    common.write_section(str(out), "a", "first A")
    common.write_section(str(out), "b", "only B")
    common.write_section(str(out), "a", "second A")
    text = out.read_text()
    assert "second A" in text and "first A" not in text and "only B" in text
    assert text.count("<!-- a:begin -->") == 1 and text.count("<!-- b:end -->") == 1


def test_benchmark_scripts_write_tables_with_expected_rows(tmp_path):
    overhead, quality = _load("overhead"), _load("quality")
    out = tmp_path / "BENCHMARKS.md"
    threads = torch.get_num_threads()
    try:
        overhead.main(["--preset", "tiny", "--models", "bert", "resnet", "--repeats", "1", "--warmup", "0",
                       "--threads", "1", "--llama-layers", "2", "--llama-hidden", "256", "--out", str(out)])
        quality.main(["--preset", "tiny", "--seeds", "2", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()

    section = text.split("<!-- overhead-cpu:begin -->")[1].split("<!-- overhead-cpu:end -->")[0]
    for model in ("bert (", "resnet18"):
        assert f"| {model}" in section
    for arm in overhead.ARMS:
        assert section.count(f"| {arm} |") == 2
    for target in ("step ratio ≤ 1.02", "memory ≤ one-line's", "bf16 memory ≤ 0.5× one-line's",
                   "eval ratio 1.00 ± noise"):
        assert section.count(f"| {target} |") == 2
    assert section.count("| surgery < 0.5 s |") == 3
    assert "Llama 2 layers × 256 (meta device)" in section and "Command: `python" in section

    section = text.split("<!-- quality:begin -->")[1].split("<!-- quality:end -->")[0]
    for task in ("### mnist", "### bbc", "### seq2seq"):
        assert task in section
    for arm in ("plain", "penal τ=0.0001", "penal τ=0.0003", "penal τ=0.001"):
        assert section.count(f"| {arm} |") == 3
    assert "**Finding:**" in section
