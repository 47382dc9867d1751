"""Installs the `penal=` keyword into transformers' and timm's model constructors, and registers their example-input
builders for the generic probe (done by `import hf_penal`)."""
from __future__ import annotations

import os
import threading

_local = threading.local()


def pop_penal_kwargs(kwargs: dict):
    """Remove `penal` / `penal_<field>` keywords from a constructor's kwargs; return (penal, fields, given)."""
    penal = kwargs.pop("penal", None)
    fields = {k[len("penal_"):]: kwargs.pop(k) for k in [k for k in kwargs if k.startswith("penal_")]}
    given = penal is not None or bool(fields)
    if penal is False and fields:
        raise ValueError(f"conflicting arguments: penal=False together with "
                         f"{', '.join('penal_' + k for k in fields)}; drop penal=False to apply penal connections")
    return penal, fields, given


class OutermostCall:
    """Context manager counting nested constructor calls, so that only the outermost one applies the surgery
    (an Auto class calls the concrete class's `from_pretrained`, which may call `_from_config`)."""

    def __enter__(self):
        self.depth = getattr(_local, "depth", 0)
        _local.depth = self.depth + 1
        return self.depth == 0

    def __exit__(self, *exc):
        _local.depth = self.depth
        return False


def looks_like_path(name) -> bool:
    """True when `name` can only be a local path, not a hub id ("org/name" or "name"): absolute, ``./``, ``../``,
    ``~``, a trailing or doubled separator, or more than one ``/``."""
    if isinstance(name, os.PathLike):
        return True
    if not isinstance(name, str):
        return False
    return (os.path.isabs(name) or name.startswith((".", "~")) or name.endswith(("/", "\\")) or "\\" in name
            or name.count("/") > 1 or "//" in name)


def missing_dir_message(path, what: str = "") -> str:
    """'no such directory: PATH' (plus the deepest missing parent when that is not PATH itself)."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(os.path.expanduser(path)))
    missing = parent
    while missing and not os.path.exists(os.path.dirname(missing)) and os.path.dirname(missing) != missing:
        missing = os.path.dirname(missing)
    hint = f" ({missing} does not exist either)" if parent and not os.path.isdir(parent) else ""
    return f"{what + ': ' if what else ''}no such directory: {path!r}{hint}"


def close_timm_names(name: str, n: int = 5) -> list[str]:
    """timm model names closest to `name` (difflib over `timm.list_models()`), best first."""
    import difflib  # noqa: PLC0415

    import timm  # noqa: PLC0415

    base = name.split(".", 1)[0]  # drop a pretrained tag ("resnet50.a1_in1k")
    return difflib.get_close_matches(base, timm.list_models(), n=n, cutoff=0.6)


def install_all() -> None:
    """Install the `penal=` keyword into both libraries and register their example-input builders for the probe."""
    from ..discovery import inputs
    from . import timm_inputs, transformers_inputs
    inputs.register(transformers_inputs.example_inputs, uses_dummy_inputs=True)
    inputs.register(timm_inputs.example_inputs)
    from . import transformers as _tf
    _tf.install()
    from . import timm as _timm
    _timm.install()
