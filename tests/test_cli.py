"""Bad input, as a newcomer meets it: `hf-penal` fails with one line on stderr and exit status ≠ 0 (a traceback only
with --debug); a missing folder is named ("no such directory") by from_pretrained / timm.create_model / inspect; an
unknown timm name comes with close matches; `sites=` strings are regexes; `hf-penal plot` works on the output folder
of a run trained with save_strategy="no"."""
import json

import pytest
import torch
from _models import saved

import hf_penal
from hf_penal import cli

PNG = b"\x89PNG\r\n\x1a\n"


def run_cli(capsys, *argv):
    rc = cli.main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------------------------------------------------- inspect
def test_inspect_lists_the_sites_of_a_model_folder(tmp_path, capsys):
    d, _, _ = saved("gpt2", tmp_path)
    rc, out, err = run_cli(capsys, "inspect", d)
    assert rc == 0 and not err
    names = [line.split()[0] for line in out.splitlines()[1:-1]]
    assert names == [f"transformer.h.{i}.{k}" for i in range(2) for k in ("attn", "mlp")]


def test_inspect_of_a_missing_folder_is_one_line_naming_it(tmp_path, capsys):
    missing = tmp_path / "no" / "model"
    rc, out, err = run_cli(capsys, "inspect", missing)
    line = one_line(err)
    assert rc == 1 and not out and "no such directory" in line and str(missing) in line


def test_inspect_of_a_folder_without_config_json_says_so(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "inspect", tmp_path)
    assert rc == 1 and "config.json" in one_line(err)


def test_inspect_of_a_mistyped_timm_name_lists_close_matches(capsys):
    pytest.importorskip("timm")
    rc, _, err = run_cli(capsys, "inspect", "resnet5O")
    line = one_line(err)
    assert rc == 1 and "'resnet5O'" in line and "close matches" in line and "resnet50," in line


def test_a_mistyped_timm_name_that_is_no_hub_id_is_one_line_without_a_hub_lookup(capsys, monkeypatch):
    pytest.importorskip("timm")
    import transformers

    def no_hub(*a, **k):
        raise AssertionError("the hub was asked")
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_hub)
    rc, out, err = run_cli(capsys, "inspect", "resnet_18")
    line = one_line(err)
    assert rc == 1 and not out and "'resnet_18'" in line and "close matches: resnet18," in line
    assert "huggingface" not in line.lower() and "connect" not in line and "hub error" not in line


@pytest.mark.parametrize("name", ["t5-smal", "some-org/some-model"])
def test_a_hub_id_shaped_name_is_looked_up_on_the_hub(name, capsys, monkeypatch):
    import transformers
    asked = []

    def hub(target, *a, **k):
        asked.append(target)
        raise OSError("We couldn't connect to the hub (test)")
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", hub)
    rc, _, err = run_cli(capsys, "inspect", name)
    assert rc == 1 and asked == [name] and "not loadable from the hub" in one_line(err)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        cli.main(["inspect", str(tmp_path / "missing"), "--debug"])


def test_bad_command_line_is_one_line_with_status_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["inspekt", "x"])
    assert e.value.code == 2 and "invalid choice" in one_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------------------------------------- plot
def test_plot_of_missing_or_empty_folders_is_one_line(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "plot", tmp_path / "nope")
    assert rc == 1 and "no such directory" in one_line(err) and "nope" in err
    rc, _, err = run_cli(capsys, "plot", tmp_path)
    assert rc == 1 and "no trainer_state.json" in one_line(err)


def test_plot_works_on_the_output_of_a_run_without_checkpoints(tmp_path, capsys):
    """save_strategy="no": no checkpoint-* folder; PenalTrainer still leaves trainer_state.json, and the command
    draws it (tests/test_trainer.py runs the command as a subprocess)."""
    from transformers import BertForSequenceClassification

    d, _, _ = saved("bert", tmp_path)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(3, 100, (8,), generator=g).tolist(), "labels": i % 3} for i in range(8)]
    run = tmp_path / "run"
    args = hf_penal.PenalTrainingArguments(output_dir=str(run), use_cpu=True, report_to="none", disable_tqdm=True,
                                           save_strategy="no", logging_steps=1, max_steps=2,
                                           per_device_train_batch_size=4, penal_log_efficiency=True)
    hf_penal.PenalTrainer(model=BertForSequenceClassification.from_pretrained(d), args=args,
                          train_dataset=data).train()
    assert not list(run.glob("checkpoint-*")) and (run / "trainer_state.json").is_file()
    capsys.readouterr()  # the training log
    rc, out, err = run_cli(capsys, "plot", run)
    assert rc == 0 and out.strip() == str(run / "penal_diagnostics.png"), err
    assert (run / "penal_diagnostics.png").read_bytes()[:8] == PNG


def test_plot_works_on_the_output_of_a_plain_trainer_with_a_penal_callback(tmp_path, capsys):
    """A plain transformers Trainer with PenalCallback, save_strategy="no": the callback writes trainer_state.json at
    train end (no save_state() call), with the penal/* rows, and the command draws it."""
    from transformers import BertForSequenceClassification, Trainer, TrainingArguments

    d, _, _ = saved("bert", tmp_path)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(3, 100, (8,), generator=g).tolist(), "labels": i % 3} for i in range(8)]
    run = tmp_path / "run"
    args = TrainingArguments(output_dir=str(run), use_cpu=True, report_to="none", disable_tqdm=True,
                             save_strategy="no", logging_steps=1, max_steps=2, per_device_train_batch_size=4)
    trainer = Trainer(model=BertForSequenceClassification.from_pretrained(d), args=args, train_dataset=data)
    hf_penal.PenalCallback(tau=1e-3, log_efficiency=True).attach(trainer)
    trainer.train()
    assert not list(run.glob("checkpoint-*"))
    rows = json.loads((run / "trainer_state.json").read_text())["log_history"]
    assert {r["step"] for r in rows if "penal/tau" in r} == {1, 2}
    capsys.readouterr()  # the training log
    rc, out, err = run_cli(capsys, "plot", run)
    assert rc == 0 and out.strip() == str(run / "penal_diagnostics.png"), err
    assert (run / "penal_diagnostics.png").read_bytes()[:8] == PNG


# --------------------------------------------------------------------------------------- the Python API's bad input
def test_from_pretrained_of_a_missing_folder_names_it(tmp_path):
    from transformers import AutoModel

    for missing in (str(tmp_path / "no" / "model"), "./no_such_model", "no_such_org/no_such_model"):
        with pytest.raises(FileNotFoundError) as e:
            AutoModel.from_pretrained(missing, penal=True)
        msg = str(e.value)
        assert "no such directory" in msg and repr(missing) in msg and "\n" not in msg


def test_timm_unknown_name_lists_close_matches_and_missing_files_are_named(tmp_path):
    timm = pytest.importorskip("timm")
    with pytest.raises(RuntimeError, match=r"unknown model 'resnet5O'; close matches: resnet50,"):
        timm.create_model("resnet5O", penal=True)
    missing = tmp_path / "gone" / "w.safetensors"
    with pytest.raises(FileNotFoundError, match="no such directory") as e:
        timm.create_model("resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(missing)), penal=True)
    assert str(missing.parent) in str(e.value) and "pretrained_cfg_overlay['file']" in str(e.value)
    with pytest.raises(FileNotFoundError, match="no such file") as e:
        timm.create_model("resnet18", checkpoint_path=str(tmp_path / "w.pth"), penal=True)
    assert str(tmp_path / "w.pth") in str(e.value)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        timm.create_model(f"local-dir:{tmp_path / 'nope'}", penal=True)


def test_a_plain_word_is_a_regex_over_site_names(tmp_path):
    d, auto, _ = saved("gpt2", tmp_path)
    model = auto.from_pretrained(d, penal={"sites": "attn"})
    assert [s.name for s in hf_penal.sites(model)] == ["transformer.h.0.attn", "transformer.h.1.attn"]
    with pytest.raises(ValueError, match="regex searched in site names") as e:
        hf_penal.apply(model, sites="atn")
    assert "transformer.h.0.mlp" in str(e.value)  # the names it could have matched
    assert [s.name for s in hf_penal.sites(model)] == ["transformer.h.0.attn", "transformer.h.1.attn"]  # untouched


def test_auto_classes_created_before_import_hf_penal_get_penal_too():
    """transformers copies from_pretrained / from_config onto each Auto class when it is created; classes created
    before `import hf_penal` (here: by importing transformers' Trainer first, as test_trainer.py does) must be wrapped
    as well, or their missing-folder error is transformers' "Repo id must be in the form ..."."""
    import transformers.models.auto.modeling_auto as auto
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    from hf_penal.integrations.transformers import _is_wrapped

    classes = [c for c in vars(auto).values() if isinstance(c, type) and issubclass(c, _BaseAutoModelClass)]
    assert len(classes) > 20
    for cls in classes:
        for name in ("from_pretrained", "from_config"):
            assert _is_wrapped(getattr(cls, name).__func__), f"{cls.__name__}.{name}"
