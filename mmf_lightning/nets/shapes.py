"""Input checks shared by the velocity networks: a wrong shape fails with the shapes named."""

import torch
from torch import nn


def check_input(net: nn.Module, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> None:
    """Raise a ValueError naming the mismatch between ``z, r, t, y`` and ``net.data_shape``."""
    name = type(net).__name__
    if tuple(z.shape[1:]) != tuple(net.data_shape):
        raise ValueError(
            f"{name} expects samples of shape (B, {', '.join(map(str, net.data_shape))}), got {tuple(z.shape)}; "
            "set the network's shape options to match the data"
        )
    for label, s in (("r", r), ("t", t)):
        if s.shape != z.shape[:1]:
            raise ValueError(f"{name}: {label} must have shape ({z.shape[0]},), got {tuple(s.shape)}")
    if net.num_classes and y is None:
        raise ValueError(f"{name} was built with num_classes={net.num_classes} but got no labels y")
    if not net.num_classes and y is not None:
        raise ValueError(f"{name} was built without num_classes but got labels y; set num_classes")
