"""`from_pretrained(..., penal=...)` / `from_config` for transformers models, and `config.penal` persistence.

After `import hf_penal`, every `PreTrainedModel.from_pretrained`, `_from_config` and Auto class `from_pretrained` /
`from_config` accepts ``penal=True | dict | PenalConfig | False`` and ``penal_<field>=...`` (``penal_tau=1e-3``).
A checkpoint whose config.json carries ``penal`` is re-penalized on load; ``penal=False`` loads it plain. The
settings are written to ``config.penal`` by `apply`, so `save_pretrained` persists them; the penal connection adds
no weights, so plain transformers loads such a checkpoint as a normal model.
"""
from __future__ import annotations

import functools

from . import outermost, pop_penal_kwargs


def _finish(model, penal, fields, given):
    from .. import surgery  # noqa: PLC0415
    from ..config import resolve_config  # noqa: PLC0415

    if penal is False:
        surgery.remove(model)
        surgery._record_config(model, None)
        return model
    saved = getattr(getattr(model, "config", None), "penal", None)
    if not given and not isinstance(saved, dict):
        return model
    base = saved if isinstance(saved, dict) and penal in (None, True) else penal
    if isinstance(base, dict) and isinstance(saved, dict) and base is saved:
        base = dict(saved)
    cfg = resolve_config(base, **fields)
    surgery.apply(model, cfg)
    surgery.warn_if_pretrained(model, cfg, pretrained=True)
    return model


def _wrap(func):
    if getattr(func, "_hf_penal", False):
        return func

    @functools.wraps(func)
    def wrapper(cls, *args, **kwargs):
        penal, fields, given = pop_penal_kwargs(kwargs)
        if given:
            from ..config import resolve_config  # noqa: PLC0415
            if penal is not False:
                resolve_config(None if penal is True else penal, **fields)  # bad input fails before loading
        with outermost() as top:
            model = func(cls, *args, **kwargs)
        if not top:
            return model
        return _finish(model, penal, fields, given)

    wrapper._hf_penal = True
    return wrapper


def install() -> bool:
    try:
        from transformers import PreTrainedModel  # noqa: PLC0415
        from transformers.models.auto.auto_factory import _BaseAutoModelClass  # noqa: PLC0415
    except Exception:  # noqa: BLE001 - transformers not installed
        return False
    for owner, name in ((PreTrainedModel, "from_pretrained"), (PreTrainedModel, "_from_config"),
                        (_BaseAutoModelClass, "from_pretrained"), (_BaseAutoModelClass, "from_config")):
        attr = owner.__dict__.get(name)
        if isinstance(attr, classmethod):
            setattr(owner, name, classmethod(_wrap(attr.__func__)))
    return True
