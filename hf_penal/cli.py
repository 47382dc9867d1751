"""`hf-penal` command line: ``inspect`` (the residual sites of a model) and ``plot`` (τ and ε of a training run).

Every failure is one line on stderr and exit status 1 (2 for a bad command line); ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

from .integrations import close_timm_names, looks_like_path, missing_dir_message
from .persistence import saved_settings


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block + error
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def _load_for_inspect(target: str, device: str = "meta"):
    """A model to list sites of: a transformers model directory (or hub id), or a timm model name, built on `device`
    with random weights (on "meta": no memory, enough for blocks in the architecture table)."""
    import torch

    import hf_penal  # noqa: F401 - installs the integrations

    if os.path.isdir(target):
        if not os.path.exists(os.path.join(target, "config.json")):
            raise FileNotFoundError(f"{target!r} has no config.json: not a transformers model folder (for a timm "
                                    f"model, pass its name, e.g. resnet50)")
        import transformers

        config = transformers.AutoConfig.from_pretrained(target)
        arch = (getattr(config, "architectures", None) or [None])[0]
        cls = getattr(transformers, arch, None) if arch else None
        saved = saved_settings(config)
        with torch.device(device):
            model = cls._from_config(config, penal=False) if cls else transformers.AutoModel.from_config(
                config, penal=False)
        return model, saved
    if looks_like_path(target):
        raise FileNotFoundError(missing_dir_message(target))
    try:
        import timm
    except ImportError:
        timm = None
    if timm is not None and timm.is_model(target):
        with torch.device(device):
            return timm.create_model(target, pretrained=False), None
    if not _hub_id_shaped(target):  # no hub lookup (and no hub error) for what can only be a mistyped name
        close = close_timm_names(target) if timm is not None else []
        hint = f" (close matches: {', '.join(close)})" if close else ""
        raise ValueError(f"unknown model {target!r}: not a timm model name{hint}, not a local directory, and not a "
                         f"hub id (org/name)")
    import transformers  # a hub id (needs the hub)
    from huggingface_hub.errors import HFValidationError

    try:
        config = transformers.AutoConfig.from_pretrained(target)
    except (OSError, HFValidationError) as e:
        close = close_timm_names(target) if timm is not None else []
        reason = f"not loadable from the hub: {_one_line(e)[:160]}"
        if close and "/" not in target:
            raise ValueError(f"unknown model {target!r}: not a timm model name (close matches: {', '.join(close)}), "
                             f"not a local directory, {reason}") from None
        raise FileNotFoundError(f"{missing_dir_message(target)}; not a timm model name either, and {reason}") from None
    saved = saved_settings(config)
    with torch.device(device):
        return transformers.AutoModel.from_config(config, penal=False), saved


_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+|[a-z0-9.-]+")


def _hub_id_shaped(name: str) -> bool:
    """Whether `name` could be a hub model id: ``org/name``, or one of the bare lower-case legacy ids (``gpt2``,
    ``bert-base-uncased``, ``t5-small``), which never hold ``_`` or capitals (timm names hold ``_``)."""
    return len(name) <= 96 and ".." not in name and "--" not in name and _HUB_ID.fullmatch(name) is not None


def _saved_taus(saved, found) -> dict:
    """Per site, the τ its saved settings give: a fixed τ, a calibrated τ_l, "auto (not calibrated)", or "-" (none
    saved, or a site the settings do not select)."""
    if not isinstance(saved, dict):
        return {s.name: "-" for s in found}
    from .config import resolve_config
    from .surgery import select_sites
    cfg = resolve_config(saved)
    chosen = {s.name for s in select_sites(found, cfg.sites)}
    cal = cfg.tau_calibrated or {}
    out = {}
    for s in found:
        if s.name not in chosen or (not cfg.auto and cfg.tau == 0):
            out[s.name] = "-"
        elif not cfg.auto:
            out[s.name] = f"{cfg.tau:g}"
        else:
            out[s.name] = f"{cal[s.name]:.3g}" if s.name in cal else f"auto (rho {cfg.tau_ratio or 'default'})"
    return out


def inspect(target: str, out=None) -> int:
    from .discovery import ProbeFailedError, discover
    from .recompute import plan

    out = out or sys.stdout
    model, saved = _load_for_inspect(target)
    try:
        found = discover(model)
    except ProbeFailedError:  # blocks outside the table: the probe runs the model, so build it for real (CPU)
        model, saved = _load_for_inspect(target, "cpu")
        found = discover(model)
    if not found:
        print(f"hf-penal inspect: {target}: no residual site found ({type(model).__name__})", file=sys.stderr)
        return 1
    w_name = max(len("name"), *(len(s.name) for s in found))
    w_block = max(len("block"), *(len(s.block) for s in found))
    storage = plan(model, found)  # what storage_dtype="recompute" does at each site
    taus = _saved_taus(saved, found)
    w_kind = max(len("kind"), *(len(s.kind) for s in found))
    w_tau = max(len("tau"), *(len(t) for t in taus.values()))
    print(f"{'name':<{w_name}}  {'block':<{w_block}}  {'kind':<{w_kind}}  {'tau':<{w_tau}}  "
          f"z with storage_dtype='recompute'", file=out)
    for s in found:
        print(f"{s.name:<{w_name}}  {s.block:<{w_block}}  {s.kind:<{w_kind}}  {taus[s.name]:<{w_tau}}  "
              f"{storage[s.name]}", file=out)
    kinds = {}
    for s in found:
        kinds[s.kind] = kinds.get(s.kind, 0) + 1
    print(f"{len(found)} residual sites in {type(model).__name__} ({', '.join(f'{k}: {v}' for k, v in kinds.items())})",
          file=out)
    if saved:
        print(f"saved penal settings (config.penal): {json.dumps(saved)}", file=out)
    return 0


def _plot(run_dir: str, output: str | None) -> int:
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(missing_dir_message(run_dir))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install matplotlib (or hf_penal[trainer])") from None
    from .plot import plot_run

    print(plot_run(run_dir, output))
    return 0


def main(argv=None) -> int:
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", help="on failure, show the full traceback")
    parser = _Parser(prog="hf-penal", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_inspect = sub.add_parser("inspect", parents=[debug],
                               help="list the residual sites of a model directory or timm model name")
    p_inspect.add_argument("target", help="transformers model directory (or hub id), or a timm model name")
    p_plot = sub.add_parser("plot", parents=[debug],
                            help="plot τ over steps and a layer × step heatmap of ε for a training run")
    p_plot.add_argument("run_dir", help="a Trainer output dir (or checkpoint dir) holding trainer_state.json")
    p_plot.add_argument("-o", "--output", default=None, help="PNG path (default: RUN_DIR/penal_diagnostics.png)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        if args.command == "inspect":
            return inspect(args.target)
        return _plot(args.run_dir, args.output)
    except Exception as e:  # noqa: BLE001 - the CLI's contract: one line, no traceback (unless --debug)
        if args.debug:
            raise
        print(f"hf-penal {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
