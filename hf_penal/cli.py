"""`hf-penal` command line: ``inspect`` (the residual sites of a model) and ``plot`` (τ and ε of a training run)."""
from __future__ import annotations

import argparse
import json
import os
import sys


def _load_for_inspect(target: str):
    """A model to list sites of: a transformers model directory (or hub id), or a timm model name."""
    import torch

    import hf_penal  # noqa: F401 - installs the integrations

    if os.path.isdir(target) and os.path.exists(os.path.join(target, "config.json")):
        import transformers

        config = transformers.AutoConfig.from_pretrained(target)
        arch = (getattr(config, "architectures", None) or [None])[0]
        cls = getattr(transformers, arch, None) if arch else None
        saved = getattr(config, "penal", None)
        with torch.device("meta"):
            model = cls._from_config(config, penal=False) if cls else transformers.AutoModel.from_config(
                config, penal=False)
        return model, saved
    try:
        import timm
    except ImportError:
        timm = None
    if timm is not None and timm.is_model(target):
        with torch.device("meta"):
            return timm.create_model(target, pretrained=False), None
    import transformers  # a hub id (needs the hub)

    config = transformers.AutoConfig.from_pretrained(target)
    with torch.device("meta"):
        return transformers.AutoModel.from_config(config, penal=False), getattr(config, "penal", None)


def inspect(target: str, out=sys.stdout) -> int:
    from .recompute import plan
    from .sites import discover

    model, saved = _load_for_inspect(target)
    found = discover(model)
    if not found:
        print(f"{target}: no residual site found ({type(model).__name__})", file=out)
        return 1
    w_name = max(len("name"), *(len(s.name) for s in found))
    w_block = max(len("block"), *(len(s.block) for s in found))
    storage = plan(model, found)  # what storage_dtype="recompute" does at each site
    w_kind = max(len("kind"), *(len(s.kind) for s in found))
    print(f"{'name':<{w_name}}  {'block':<{w_block}}  {'kind':<{w_kind}}  z with storage_dtype='recompute'", file=out)
    for s in found:
        print(f"{s.name:<{w_name}}  {s.block:<{w_block}}  {s.kind:<{w_kind}}  {storage[s.name]}", file=out)
    kinds = {}
    for s in found:
        kinds[s.kind] = kinds.get(s.kind, 0) + 1
    print(f"{len(found)} residual sites in {type(model).__name__} ({', '.join(f'{k}: {v}' for k, v in kinds.items())})",
          file=out)
    if saved:
        print(f"saved penal settings (config.penal): {json.dumps(saved)}", file=out)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="hf-penal", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_inspect = sub.add_parser("inspect", help="list the residual sites of a model directory or timm model name")
    p_inspect.add_argument("target", help="transformers model directory (or hub id), or a timm model name")
    p_plot = sub.add_parser("plot", help="plot τ over steps and a layer × step heatmap of ε for a training run")
    p_plot.add_argument("run_dir", help="a Trainer output dir (or checkpoint dir) holding trainer_state.json")
    p_plot.add_argument("-o", "--output", default=None, help="PNG path (default: RUN_DIR/penal_diagnostics.png)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.command == "inspect":
        return inspect(args.target)
    from .plot import plot_run

    path = plot_run(args.run_dir, args.output)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
