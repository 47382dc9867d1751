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

from . import outermost, pop_penal_kwargs


def _wrap(func):
    if getattr(func, "_hf_penal", False):
        return func

    @functools.wraps(func)
    def create_model(*args, **kwargs):
        penal, fields, given = pop_penal_kwargs(kwargs)
        example_inputs = fields.pop("example_inputs", None)  # for the generic probe, not a PenalConfig field
        if not given or penal is False:
            return func(*args, **kwargs)
        from .. import surgery  # noqa: PLC0415
        from ..config import resolve_config  # noqa: PLC0415
        cfg = resolve_config(None if penal is True else penal, **fields)  # bad input fails before building
        _check_local_files(kwargs)
        with outermost():
            model = func(*args, **kwargs)
        surgery.apply(model, cfg, example_inputs=example_inputs)
        pretrained = bool(kwargs.get("pretrained") or kwargs.get("checkpoint_path") or (len(args) > 1 and args[1]))
        surgery.warn_if_pretrained(model, cfg, pretrained=pretrained)
        return model

    create_model._hf_penal = True
    return create_model


def _check_local_files(kwargs: dict) -> None:
    """timm raises a bare FileNotFoundError() for a missing local checkpoint: name the file and the argument."""
    import os  # noqa: PLC0415

    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    for what, path in (("pretrained_cfg_overlay['file']", overlay.get("file") if kwargs.get("pretrained") else None),
                       ("checkpoint_path", kwargs.get("checkpoint_path"))):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"timm.create_model: {what} {path!r} does not exist")


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
