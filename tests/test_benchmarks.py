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


def _run(script, argv):
    """`script.main(argv)` in this process; the scripts set torch's thread count, which is restored after."""
    threads = torch.get_num_threads()
    try:
        script.main(argv)
    finally:
        torch.set_num_threads(threads)


def test_benchmark_scripts_write_tables_with_expected_rows(tmp_path):
    overhead = _load("overhead")
    out = tmp_path / "BENCHMARKS.md"
    _run(overhead, ["--preset", "tiny", "--models", "bert", "resnet", "--repeats", "1", "--warmup", "0",
                    "--threads", "1", "--llama-layers", "2", "--llama-hidden", "256", "--out", str(out)])
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


def test_quality_study_selects_by_its_rule_then_reports_the_held_out_task(tmp_path):
    quality = _load("quality")
    out = tmp_path / "BENCHMARKS.md"
    _run(quality, ["--preset", "tiny", "--seeds", "1", "--tasks", "bbc", "mnist", "--threads", "1", "--out", str(out),
                   "--json", str(tmp_path / "runs.json")])
    section = out.read_text().split("<!-- quality:begin -->")[1].split("<!-- quality:end -->")[0]
    assert "### bbc" in section and "### mnist — **held out**" in section and "Selection rule" in section
    for arm in ("plain", "paper τ=0.0003", "auto ρ=0.01", "auto ρ=0.03", "auto ρ=0.1", "auto ρ=0.3"):
        assert f"| {arm} |" in section
    runs = __import__("json").loads((tmp_path / "runs.json").read_text())
    chosen = quality.select({(r["task"], r["lr"], r["arm"]): [r] for r in runs if r["seed"] < 1}, 1)
    rho = chosen["scratch"][0]
    assert f"scratch: **ρ = {rho:g}**" in section
    held = {r["arm"] for r in runs if r["task"] == "mnist"}
    assert held == {"plain", "paper τ=0.0003", f"auto ρ={rho:g}"}  # the held-out task runs the selected default
    extra = {r["arm"] for r in runs if r["task"] == "bbc" and r["seed"] >= 1}
    assert extra == {"plain", f"auto ρ={rho:g}"}  # more seeds for plain and the selected default only
    assert "**Held-out check:**" in section and "**Screen" in section


def test_selection_maximises_the_worst_case_then_the_mean():
    quality = _load("quality")

    def cells(**deltas):  # arm -> [Δ in (bbc, 1e-3), Δ in (seq2seq, 1e-3)]; plain metric 0.5 everywhere
        res = {}
        for task_i, task in enumerate(("bbc", "seq2seq")):
            res[(task, 1e-3, "plain")] = [dict(metric=0.5, seed=0)]
            for arm, ds in deltas.items():
                res[(task, 1e-3, arm)] = [dict(metric=0.5 + ds[task_i], seed=0)]
        return res

    got = quality.select(cells(**{"auto ρ=0.01": (0.02, -0.01), "auto ρ=0.03": (0.20, -0.03),
                                  "auto ρ=0.1": (0.01, 0.00), "auto ρ=0.3": (0.30, -0.30)}), 1)
    assert got["scratch"][0] == 0.1 and "pretrained" not in got  # best worst case, whatever the mean
    got = quality.select(cells(**{"auto ρ=0.01": (0.00, -0.002), "auto ρ=0.03": (0.10, -0.004),
                                  "auto ρ=0.1": (0.00, -0.001), "auto ρ=0.3": (0.30, -0.30)}), 1)
    assert got["scratch"][0] == 0.03  # within 0.005 of the best worst case: the larger mean wins
