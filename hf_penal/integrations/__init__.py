"""Installs the `penal=` keyword into transformers' and timm's model constructors (done by `import hf_penal`)."""
from __future__ import annotations

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


class outermost:
    """Context manager counting nested constructor calls, so that only the outermost one applies the surgery
    (an Auto class calls the concrete class's `from_pretrained`, which may call `_from_config`)."""

    def __enter__(self):
        self.depth = getattr(_local, "depth", 0)
        _local.depth = self.depth + 1
        return self.depth == 0

    def __exit__(self, *exc):
        _local.depth = self.depth
        return False


def install_all() -> None:
    from . import transformers as _tf
    _tf.install()
    from . import timm as _timm
    _timm.install()
