"""`timm.create_model(..., penal=...)`.

After `import hf_penal`, `timm.create_model` accepts ``penal=True | dict | PenalConfig`` and ``penal_<field>=...``
(``penal_example_inputs=...``: inputs for the generic probe);
without them it behaves exactly as before. Weights load as usual (hub, ``pretrained_cfg_overlay=dict(file=...)``,
``checkpoint_path=...``) and the surgery is applied afterwards. The settings are recorded in
``model.pretrained_cfg["penal"]``; the state_dict is the plain model's, so a penalized timm model is saved with
``safetensors.torch.save_file(model.state_dict(), path)`` and re-created with
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path),
penal=model.pretrained_cfg["penal"])``.
"""
from __future__ import annotations

import functools

from . import OutermostCall, close_timm_names, missing_dir_message, pop_penal_kwargs


def _wrap(func):
    if getattr(func, "_hf_penal", False):
        return func

    @functools.wraps(func)
    def create_model(*args, **kwargs):
        penal, fields, given = pop_penal_kwargs(kwargs)
        example_inputs = fields.pop("example_inputs", None)  # for the generic probe, not a PenalConfig field
        pretrained = bool(kwargs.get("pretrained") or kwargs.get("checkpoint_path") or (len(args) > 1 and args[1]))
        from .. import persistence  # noqa: PLC0415
        if not given or penal is False:
            model = func(*args, **kwargs)
            persistence.mark_pretrained(model, pretrained)
            return model
        from .. import surgery  # noqa: PLC0415
        from ..config import effective_config  # noqa: PLC0415
        cfg = effective_config(penal, fields)  # bad input fails before building
        _check_model_name(args[0] if args else kwargs.get("model_name"))
        _check_local_files(kwargs)
        with OutermostCall():
            model = func(*args, **kwargs)
        persistence.mark_pretrained(model, pretrained)
        # warns when a mode changes loaded weights
        surgery.apply(model, cfg, example_inputs=example_inputs, pretrained=pretrained)
        return model

    create_model._hf_penal = True
    return create_model


def _check_model_name(name) -> None:
    """An unknown timm name fails with the close matches; a missing ``local-dir:`` folder with its path."""
    import os  # noqa: PLC0415

    import timm  # noqa: PLC0415

    if not isinstance(name, str):
        return
    source, sep, rest = name.partition(":")
    if sep and source.lower() == "local-dir":
        if not os.path.isdir(rest):
            raise FileNotFoundError(missing_dir_message(rest, "timm.create_model"))
        return
    if sep or "/" in name or "\\" in name or timm.is_model(name):  # hub ids and paths: timm's own checks
        return
    close = close_timm_names(name)
    raise RuntimeError(f"timm.create_model: unknown model {name!r}; "
                       + (f"close matches: {', '.join(close)}" if close else "see timm.list_models()"))


def _check_local_files(kwargs: dict) -> None:
    """timm raises a bare FileNotFoundError() for a missing local checkpoint: name the file and the argument."""
    import os  # noqa: PLC0415

    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    for what, path in (("pretrained_cfg_overlay['file']", overlay.get("file") if kwargs.get("pretrained") else None),
                       ("checkpoint_path", kwargs.get("checkpoint_path"))):
        if not path or os.path.isfile(path):
            continue
        folder = os.path.dirname(os.path.abspath(os.path.expanduser(os.fspath(path))))
        if not os.path.isdir(folder):
            raise FileNotFoundError(missing_dir_message(folder, f"timm.create_model: {what} {os.fspath(path)!r}"))
        raise FileNotFoundError(f"timm.create_model: no such file: {what} {os.fspath(path)!r}")


def install() -> bool:
    try:
        import timm  # noqa: PLC0415
        import timm.models  # noqa: PLC0415
        import timm.models._factory as factory  # noqa: PLC0415
    except Exception:  # noqa: BLE001 - timm (or torchvision) not installed
        return False
    wrapped = _wrap(factory.create_model)
    for mod in (timm, timm.models, factory):
        if getattr(mod, "create_model", None) is not None:
            mod.create_model = wrapped
    return True
