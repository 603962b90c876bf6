"""What a fit checks before its first step, each naming the value and the fix: the precision, the network against
the data (shape, classes, source), the objective against the network, the lambda schedule."""

from torch import nn


def check_net_and_data(net: nn.Module, objective, source, trainer) -> None:
    """The precision, and ``net`` against the trainer's datamodule (when it has one): a ValueError naming both."""
    precision = str(trainer.precision) if trainer is not None else "32-true"
    if precision in ("16-true", "bf16-true"):
        raise ValueError(
            f"trainer.precision={precision} keeps the weights in half precision, which the float32 JVP "
            "cannot mix with; use bf16-mixed or 16-mixed (the weights stay float32, the JVP runs in float32)"
        )
    dm = getattr(trainer, "datamodule", None) if trainer is not None else None
    shape, data_shape = getattr(dm, "data_shape", None), tuple(net.data_shape)
    if shape is not None and tuple(shape) != data_shape:
        raise ValueError(
            f"the network expects data of shape {data_shape} but the datamodule "
            f"{type(dm).__name__} yields {tuple(shape)}; set the network's shape options "
            "(e.g. model.net.init_args.in_channels / image_size / dim) to match"
        )
    dm_classes = getattr(dm, "num_classes", None)
    net_classes = getattr(net, "num_classes", None)
    if dm_classes and net_classes and dm_classes != net_classes:
        raise ValueError(f"the network has num_classes={net_classes}, the datamodule {dm_classes}")
    if net_classes and dm is not None and not dm_classes:
        raise ValueError(
            f"the network is class-conditional (num_classes={net_classes}) but the datamodule "
            f"{type(dm).__name__} has no labels"
        )
    objective.check_net(net)
    dm_source = getattr(dm, "source", None)
    if dm_source is not None and dm_source != source:
        raise ValueError(
            f"the datamodule draws its sources e from {dm_source!r} but the model samples from "
            f"{source!r}; set model.source to the same (class_path and init_args)"
        )


def check_lambda_scheduler(trainer, objective) -> None:
    """One LambdaScheduler callback when the objective reads lambda, and never two."""
    schedulers = [cb for cb in trainer.callbacks if type(cb).__name__ == "LambdaScheduler"]
    if len(schedulers) > 1:
        raise ValueError(
            f"{len(schedulers)} LambdaScheduler callbacks are configured; keep one (on the command line, "
            "the top-level lambda_schedule group already adds one)"
        )
    if objective.uses_lambda and not schedulers:
        raise ValueError(
            f"{type(objective).__name__} reads lambda, but no LambdaScheduler callback is configured; "
            "add one to trainer.callbacks, e.g. class_path: mmf_lightning.callbacks.LambdaScheduler "
            "with init_args.schedule a Constant / LinearWarmup / CosineWarmup / Step"
        )
