"""`from_pretrained(..., penal=...)` / `from_config` for transformers models, and `config.penal` persistence.

After `import hf_penal`, every `PreTrainedModel.from_pretrained`, `_from_config` and Auto class `from_pretrained` /
`from_config` accepts ``penal=True | dict | PenalConfig | False`` and ``penal_<field>=...`` (``penal_tau=1e-3``;
``penal_example_inputs=...`` gives the generic probe its inputs for an architecture outside the table).
A checkpoint whose config.json carries ``penal`` is re-penalized on load; ``penal=False`` loads it plain. The
settings are written to ``config.penal`` by `apply`, so `save_pretrained` persists them; the penal connection adds
no weights, so plain transformers loads such a checkpoint as a normal model. Residual modes with weights (LayerNorm
γ/β, a learnable M) save them under ``...residual_mode...`` keys; transformers drops those on load (the surgery runs
after loading), so `_load_mode_weights` reads them again from the checkpoint's safetensors.
"""
from __future__ import annotations

import functools
import json
import os

from . import OutermostCall, looks_like_path, missing_dir_message, pop_penal_kwargs


def _load_mode_weights(model, source, kwargs) -> int:
    """Residual-mode parameters (LayerNorm γ/β, a learnable M) do not exist when transformers loads the checkpoint
    (the surgery runs afterwards), so transformers drops them as unexpected keys: read them again from the
    checkpoint's safetensors. Returns the number of tensors loaded."""
    own = model.state_dict()
    wanted = {k for k in own if ".residual_mode." in f".{k}"}
    if not wanted or not isinstance(source, (str, os.PathLike)):
        return 0
    from safetensors import safe_open
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

    opts = {k: kwargs[k] for k in ("cache_dir", "revision", "subfolder", "token", "local_files_only") if k in kwargs}
    opts["_raise_exceptions_for_missing_entries"] = False
    try:
        index = cached_file(source, SAFE_WEIGHTS_INDEX_NAME, **opts)
        if index:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            folder = os.path.dirname(index)
            files = sorted({os.path.join(folder, v) for k, v in weight_map.items() if ".residual_mode." in f".{k}"})
        else:
            single = cached_file(source, SAFE_WEIGHTS_NAME, **opts)
            files = [single] if single else []
    except Exception:  # noqa: BLE001 - no safetensors checkpoint to read: the modes keep their initial values
        return 0
    prefix = getattr(model, "base_model_prefix", "") or ""
    found = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                if ".residual_mode." not in f".{key}":
                    continue
                # a checkpoint of another head class: the base model's keys with or without its prefix
                for name in (key, key[len(prefix) + 1:] if prefix and key.startswith(prefix + ".") else None,
                             f"{prefix}.{key}" if prefix else None):
                    if name in wanted:
                        found[name] = f.get_tensor(key)
                        break
    if found:
        model.load_state_dict(found, strict=False)
    return len(found)


def _penalize_loaded(model, penal, fields, given, source=None, kwargs=None, example_inputs=None):
    from .. import persistence, surgery  # noqa: PLC0415
    from ..config import effective_config, resolve_config  # noqa: PLC0415

    pretrained = source is not None  # from_pretrained: loaded with weights
    persistence.mark_pretrained(model, pretrained)  # for a later apply (PenalTrainer) that is not told
    if penal is False:
        surgery.remove(model)
        persistence.forget(model)
        return model
    saved = persistence.saved_settings(model)
    if saved is not None and not isinstance(saved, dict):
        raise TypeError(f"config.json field 'penal' must be a dict of PenalConfig fields (as written by "
                        f"save_pretrained), got {type(saved).__name__} {saved!r}")
    if isinstance(saved, dict) and penal in (None, True):
        try:
            resolve_config(dict(saved))
        except (ValueError, TypeError) as e:
            raise type(e)(f"config.json 'penal' settings are invalid: {e}") from None
    if not given and not isinstance(saved, dict):
        return model
    cfg = effective_config(penal, fields, saved=dict(saved) if isinstance(saved, dict) else None)
    surgery.apply(model, cfg, example_inputs=example_inputs, pretrained=pretrained)
    if cfg.mode != "identity":
        _load_mode_weights(model, source, kwargs or {})
    return model


def _load_naming_a_missing_dir(func, cls, source, args, kwargs):
    """`from_pretrained`, but a source that is not a local directory fails with one line naming the path (instead of
    transformers' "Repo id must be in the form ..." for a path, or a hub error for a mistyped folder)."""
    if not isinstance(source, (str, os.PathLike)) or os.path.isdir(source):
        return func(cls, *args, **kwargs)
    if looks_like_path(source):
        raise FileNotFoundError(missing_dir_message(source, "from_pretrained"))
    from huggingface_hub.errors import HFValidationError  # noqa: PLC0415

    try:  # "org/name" or "name": a hub id, or a relative folder that does not exist
        return func(cls, *args, **kwargs)
    except (OSError, HFValidationError) as e:  # what transformers raises for an id it cannot resolve
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise FileNotFoundError(f"{missing_dir_message(source, 'from_pretrained')}, and no model of that id could be "
                                f"loaded from the hub ({reason})") from None


def _is_wrapped(func) -> bool:
    # transformers' auto_class_update gives each Auto class a copy of _BaseAutoModelClass's method (copy_func: same
    # code and closure, no attributes), so a copy of our wrapper is recognised by its code
    return getattr(func, "_hf_penal", False) or getattr(func, "__code__", None) is _WRAPPER_CODE


def _wrap(func):
    if _is_wrapped(func):
        return func

    @functools.wraps(func)
    def wrapper(cls, *args, **kwargs):
        penal, fields, given = pop_penal_kwargs(kwargs)
        example_inputs = fields.pop("example_inputs", None)  # for the generic probe, not a PenalConfig field
        if given:
            from ..config import resolve_config  # noqa: PLC0415
            if penal is not False:
                resolve_config(None if penal is True else penal, **fields)  # bad input fails before loading
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        with OutermostCall() as top:
            if top and given and func.__name__ == "from_pretrained":
                model = _load_naming_a_missing_dir(func, cls, source, args, kwargs)
            else:
                model = func(cls, *args, **kwargs)
        if not top:
            return model
        source = source if func.__name__ == "from_pretrained" else None  # from_config: no weights loaded
        return _penalize_loaded(model, penal, fields, given, source, kwargs, example_inputs)

    wrapper._hf_penal = True
    return wrapper


_WRAPPER_CODE = None
_WRAPPER_CODE = _wrap(lambda cls: None).__code__


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _wrap_save(func):
    if getattr(func, "_hf_penal", False):
        return func

    @functools.wraps(func)
    def save_pretrained(self, *args, **kwargs):
        from .. import surgery  # noqa: PLC0415
        surgery.record_settings(self)  # the calibrated τ_l go into config.json with the rest
        return func(self, *args, **kwargs)

    save_pretrained._hf_penal = True
    return save_pretrained


def install() -> bool:
    try:
        from transformers import PreTrainedModel  # noqa: PLC0415
        from transformers.models.auto.auto_factory import _BaseAutoModelClass  # noqa: PLC0415
    except Exception:  # noqa: BLE001 - transformers not installed
        return False
    # Auto classes created before `import hf_penal` (e.g. by `from transformers import AutoModel`) hold their own copy
    # of from_pretrained / from_config: wrap those too
    autos = [(cls, name) for cls in (_BaseAutoModelClass, *_subclasses(_BaseAutoModelClass))
             for name in ("from_pretrained", "from_config")]
    for owner, name in ((PreTrainedModel, "from_pretrained"), (PreTrainedModel, "_from_config"), *autos):
        attr = owner.__dict__.get(name)
        if isinstance(attr, classmethod):
            setattr(owner, name, classmethod(_wrap(attr.__func__)))
    PreTrainedModel.save_pretrained = _wrap_save(PreTrainedModel.save_pretrained)
    return True
