"""Removing hf_penal's own forward (pre-)hooks from a module: the one place that edits torch's hook dicts.

torch returns a handle for each hook, but handles do not survive deepcopy or pickle (the hooks themselves do), so
hooks are found again by their type and removed from every dict that may hold their key.
"""
from __future__ import annotations

from torch import nn


def remove_hooks(module: nn.Module, kinds: tuple) -> None:
    """Remove the forward hooks and forward pre-hooks of `module` that are instances of `kinds`."""
    for hooks, extra in ((module._forward_pre_hooks, (module._forward_pre_hooks_with_kwargs,)),
                         (module._forward_hooks, (module._forward_hooks_with_kwargs,
                                                  module._forward_hooks_always_called))):
        for key in [k for k, h in hooks.items() if isinstance(h, kinds)]:
            del hooks[key]
            for d in extra:
                d.pop(key, None)
