"""The optimizer and the learning-rate schedule of a run: Adam (AdamW with weight decay), a linear warm-up, then a
cosine decay to ``min_lr`` at the last step (or constant)."""

import math

import torch


def make_optimizer(params, lr: float, betas, weight_decay: float, loss_scaled: bool) -> torch.optim.Optimizer:
    """Fused where it can be: it skips a non-finite step on the device (found_inf), and is the fastest Adam. Not
    under a loss scaler (``loss_scaled``, 16-mixed): a fused Adam unscales inside its step, so the gradient norm,
    the skip and spike checks and gradient clipping would all see the scaled gradient (and Lightning refuses
    clipping); the plain Adam lets Lightning unscale first, and the scaler skips the steps that overflowed."""
    opt_cls = torch.optim.AdamW if weight_decay > 0 else torch.optim.Adam
    params, args = list(params), dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    try:
        return opt_cls(params, **args, **({} if loss_scaled else {"fused": True}))
    except RuntimeError:  # a device or dtype without the fused kernel: SkipGuard drops the grads instead
        return opt_cls(params, **args)


def lr_factor(total_steps: int, warmup: int, decay: str, floor: float):
    """``step -> factor`` of the learning rate at each optimizer step of a run of ``total_steps``; ``floor`` is
    ``min_lr / lr``."""
    total = max(int(total_steps), 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if decay == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
