"""A network's forward, and its explicit JVP when it has one, compiled with ``torch.compile``."""

import copy

import torch
from torch import nn


class CompiledNet:
    """Calls like ``net`` (``(z, r, t[, y]) -> u``) and, when ``net`` has one, ``net.jvp``, through
    ``torch.compile``; every other attribute (``num_classes``, ``has_explicit_jvp``, ...) is the network's.

    It holds no weights of its own: the network keeps its parameters, state dict and checkpoint keys (no
    ``_orig_mod.`` prefix), and is not a submodule of whoever holds this. ``torch.func.jvp`` over a compiled
    forward works (the UNet and the DiT take that path), and so does autograd through both.

    Inductor's own random numbers differ from eager's, so with dropout a compiled pass would draw other masks
    than an eager one and than a second compiled graph: ``fallback_random`` makes compiled code draw eager's
    numbers, which keeps a compiled run's losses those of an eager run (and lambda = 0's replayed masks equal).
    """

    def __init__(self, net: nn.Module, **compile_kwargs):
        import torch._inductor.config

        torch._inductor.config.fallback_random = True
        self.net, self._compile_kwargs = net, compile_kwargs
        self._forward = torch.compile(net, **compile_kwargs)
        self._jvp = torch.compile(net.jvp, **compile_kwargs) if hasattr(net, "jvp") else None

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self._forward(*args, **kwargs)

    def jvp(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if self._jvp is None:
            raise AttributeError(f"{type(self.net).__name__} has no explicit jvp")
        return self._jvp(*args, **kwargs)

    def __getattr__(self, name: str):
        if "net" not in self.__dict__:  # a copy or an unpickling under way: nothing to forward to yet
            raise AttributeError(name)
        return getattr(self.__dict__["net"], name)

    def __deepcopy__(self, memo) -> "CompiledNet":
        """A compiled wrapper of a copy of the network (consistency training's target, Lightning's EMA copy of a
        module that keeps its compiled net); compiled again at its first call."""
        return CompiledNet(copy.deepcopy(self.net, memo), **self._compile_kwargs)
