"""Smoke tests of benchmarks/overhead.py and benchmarks/quality.py at their `tiny` presets (seconds, not minutes).

They run each script's `main` in this process (importing torch/transformers/timm once) and check that the markdown
tables have the rows the full runs will have, and that each script rewrites only its own section of the file.
"""
import importlib
import json
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


def test_compile_column_reports_ratios_graph_breaks_and_tau_recompiles(tmp_path):
    import torch._dynamo

    import hf_penal  # noqa: F401 - sets dynamo's hook guards; the benchmark's patch must restore that setting
    overhead = _load("overhead")
    out, raw = tmp_path / "BENCHMARKS.md", tmp_path / "compile.json"
    _run(overhead, ["--preset", "tiny", "--models", "bert", "--compile-only", "--compile", "aot_eager",
                    "--compile-rounds", "2", "--repeats", "1", "--warmup", "0", "--threads", "1", "--out", str(out),
                    "--json", str(raw)])
    assert torch._dynamo.config.skip_nnmodule_hook_guards is False  # hf_penal's own setting, restored after the patch
    section = out.read_text().split("<!-- overhead-cpu-compile:begin -->")[1].split("<!-- overhead-cpu-compile:end")[0]
    assert "| bert (2 layers × 32, seq 16) | aot_eager |" in section and "Command: `python" in section
    (res,) = json.loads(raw.read_text())["results"]
    assert [sorted(r) for r in res["rounds"]] == [["penal", "plain"]] * 2
    for rd in res["rounds"]:
        assert rd["plain"]["graphs"] >= 1 and rd["penal"]["graphs"] >= 1  # each arm compiled its own graph
        assert rd["penal"]["graph_breaks"] == rd["plain"]["graph_breaks"] == 0
        assert rd["penal"]["tau_recompiles"] == 0
    assert res["step"]["penal"][0] > 0 and res["compile_ratio"] > 0


def test_quality_study_selects_by_its_rule_then_runs_held_out_tasks_with_the_selection(tmp_path):
    quality = _load("quality")
    out = tmp_path / "BENCHMARKS.md"
    runs = quality.main(["--preset", "tiny", "--tasks", "bbc", "seq2seq", "lm_gpt2", "mnist", "--parts", "grid",
                         "--out", str(out), "--figures", str(tmp_path), "--json", str(tmp_path / "runs.json")])
    torch.set_num_threads(4)
    section = out.read_text().split("<!-- quality:begin -->")[1].split("<!-- quality:end -->")[0]
    chosen = quality.select(runs, quality.PRESETS["tiny"])
    rho = chosen["rho"]
    assert f"**ρ = {rho:g}**" in section and "Selection rule" in section and "### mnist — **held out**" in section
    held = {r["arm"] for r in runs if r["task"] == "mnist"}
    assert held == {"plain", f"ρ={rho:g}", "plain wd 0.005", "plain warm-up 5×", "τ=0"}  # the selected ρ only
    sel = {r["arm"] for r in runs if r["task"] == "bbc"}
    assert sel == {"plain", "ρ=0.01", "ρ=0.03", "ρ=0.1", "plain wd 0.1", "plain warm-up 5×", "τ=0"}
    # connections with τ = 0 train exactly as plain: the same metric, seed by seed
    by = {(r["task"], r["lr"], r["arm"], r["seed"]): r["metric"] for r in runs}
    tau0 = [k for k in by if k[2] == "τ=0"]
    assert len(tau0) == 8 and all(by[k] == by[(k[0], k[1], "plain", k[3])] for k in tau0)
    assert json.loads((tmp_path / "runs.json").read_text()) == json.loads(json.dumps(runs))
    assert "comparisons in the table, Holm-corrected" in section and "| lm_gpt2 |" in section


def _grid(metrics: dict, seeds=2):
    """Runs from {(task, lr, arm): mean}: `seeds` runs per cell at mean ± 0.001."""
    return [dict(task=t, lr=lr, arm=arm, seed=s, metric=m + (0.001 if s % 2 else -0.001))
            for (t, lr, arm), m in metrics.items() for s in range(seeds)]


def test_selection_compares_each_arm_at_its_own_best_lr_and_maximises_the_worst_case():
    quality = _load("quality")
    preset = quality.PRESETS["tiny"]
    def results(gains):  # gains[ρ] = per task (Δ at lr 0, Δ at lr 1); plain is best at lr 0 (0.6) not lr 1 (0.4)
        m = {}
        for t in quality.SELECTION:
            hb, lrs = t != "lm_gpt2", preset.tasks[t]["lrs"]
            m[(t, lrs[0], "plain")], m[(t, lrs[1], "plain")] = (0.6, 0.4) if hb else (60.0, 80.0)
            for rho, per_task in gains.items():
                for lr, base, d in zip(lrs, (0.6, 0.4), per_task[t]):
                    m[(t, lr, f"ρ={rho:g}")] = base + d if hb else (100 * base) * (1 - d)  # lower ppl = gain
        return _grid(m)

    # ρ 0.1 gains +0.3 at lr 1 (0.7 > plain's best 0.6: +0.1) everywhere; ρ 0.01 is +0.05 at lr 0 but -0.2 on lm
    got = quality.select(results({
        0.01: {"bbc": (0.05, 0.0), "seq2seq": (0.05, 0.0), "lm_gpt2": (-0.2, 0.0)},
        0.03: {"bbc": (0.0, 0.0), "seq2seq": (0.0, 0.0), "lm_gpt2": (0.0, 0.0)},
        0.1: {"bbc": (0.0, 0.3), "seq2seq": (0.0, 0.3), "lm_gpt2": (0.0, 0.25)}}), preset)
    assert got["rho"] == 0.1 and abs(got["worst"] - 0.1) < 1e-9  # best lr vs best lr: 0.4 + 0.3 − 0.6
    # within 0.005 of the best worst case: the smaller ρ wins, whatever the mean
    got = quality.select(results({
        0.01: {"bbc": (0.010, 0), "seq2seq": (0.010, 0), "lm_gpt2": (0.010, 0)},
        0.03: {"bbc": (0.013, 0), "seq2seq": (0.2, 0), "lm_gpt2": (0.2, 0)},
        0.1: {"bbc": (-0.1, 0), "seq2seq": (0.3, 0), "lm_gpt2": (0.3, 0)}}), preset)
    assert got["rho"] == 0.01
    assert quality.select([r for r in results({0.01: {t: (0, 0) for t in quality.SELECTION}})
                           if r["task"] != "seq2seq"], preset) is None  # incomplete selection: no verdict


def test_welch_matches_scipy_and_holm_controls_the_family():
    from scipy import stats
    common = _load("_common")
    a, b = [0.91, 0.89, 0.93, 0.90, 0.92], [0.80, 0.86, 0.78]
    w = common.welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert abs(w["p"] - ref.pvalue) < 1e-12 and abs(w["t"] - ref.statistic) < 1e-12
    assert abs(w["df"] - ref.df) < 1e-9
    ci = ref.confidence_interval(0.95)
    assert abs(w["lo"] - ci.low) < 1e-12 and abs(w["hi"] - ci.high) < 1e-12
    p, n = common.paired_p({0: 1.0, 1: 2.0, 2: 3.5}, {0: 0.5, 1: 1.0, 2: 2.0, 3: 9.0})
    assert n == 3 and abs(p - stats.ttest_rel([1.0, 2.0, 3.5], [0.5, 1.0, 2.0]).pvalue) < 1e-12
    # Holm: sorted p 0.01 ≤ 0.05/3, 0.02 ≤ 0.05/2, 0.04 ≤ 0.05/1 -> all; with a 4th p, 0.02 > 0.05/3 stops it
    assert common.holm([0.02, 0.01, 0.04]) == [True, True, True]
    assert common.holm([0.02, 0.01, 0.04, 0.5]) == [False, True, False, False]


def test_lr_sensitivity_is_the_mean_distance_from_the_arms_own_best_with_a_cap():
    quality = _load("quality")
    assert quality.lr_sensitivity({1: 0.9, 2: 0.7, 3: 0.1}, True, 0.2) == pytest.approx((0 + 0.2 + 0.7) / 3)
    assert quality.lr_sensitivity({1: 3.0, 2: 4.0, 3: 9.0}, False, 5.0) == pytest.approx((0 + 1 + 2) / 3)
