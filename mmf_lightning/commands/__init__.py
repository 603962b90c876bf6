"""The commands, one file each: ``fit`` / ``validate`` / ``test`` / ``predict`` (LightningCLI, ``commands.fit``),
``sample``, ``evaluate``, ``plot`` and ``download-weights``. This file lists them and dispatches, and imports nothing
heavy: each command imports what it needs when it runs."""

import argparse
import importlib
import os
import sys
from argparse import ArgumentError
from pathlib import Path

# the commands LightningCLI does not have: name -> (module, function of the arguments after the name);
# imported on use, so `fit` does not load the evaluation code
COMMANDS = {
    "sample": (
        "mmf_lightning.commands.sample",
        "sample_main",
        "Draw samples from a checkpoint into an .npz and a picture.",
    ),
    "evaluate": (
        "mmf_lightning.commands.evaluate",
        "evaluate_main",
        "The paper's metrics for checkpoints: JSON, tables, plot.",
    ),
    "plot": (
        "mmf_lightning.commands.plot",
        "plot_main",
        "The paper's figures (Figs. 1-6) for a folder of runs, as PNG files.",
    ),
    "sweep": (
        "mmf_lightning.commands.sweep",
        "sweep_main",
        "Run a W&B grid sweep here, one run after another, without a W&B server.",
    ),
    "download-weights": (
        "mmf_lightning.commands.download_weights",
        "download_weights_main",
        "Stage FID's Inception and LPIPS' AlexNet weights for offline use.",
    ),
}


# LightningCLI's commands (``commands.fit``): name -> one line
LIGHTNING_COMMANDS = {
    "fit": "Train a model from a config (runs the full optimization routine).",
    "validate": "Run one validation epoch on a checkpoint.",
    "test": "Run one test epoch on a checkpoint.",
    "predict": "One-step samples for the predict data of a checkpoint.",
}
DESCRIPTION = "Train, sample and evaluate one-step generators (Modular MeanFlow and relatives)."
TRACEBACK_ENV = "MMF_LIGHTNING_TRACEBACK"


PACKAGE_DIR = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    """``argv`` defaults to ``sys.argv[1:]``; tests pass it explicitly. An error raised by this
    package's own checks (a bad value, a missing file, an unreadable checkpoint) ends in one line,
    ``error: <what>; <what to do>``, with exit status 2; ``MMF_LIGHTNING_TRACEBACK=1`` shows the
    traceback instead. Errors from elsewhere keep their traceback."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):  # the list of commands, without importing Lightning
        print(usage())
        if not args:
            print("error: give a command; see `python -m mmf_lightning --help`", file=sys.stderr)
        raise SystemExit(0 if args else 2)
    try:
        if args and args[0] in COMMANDS:
            module, function, _ = COMMANDS[args[0]]
            getattr(importlib.import_module(module), function)(args[1:])
            return
        from mmf_lightning.commands.fit import MMFLightningCLI

        MMFLightningCLI(args=None if argv is None else args)
    except (ValueError, OSError, TypeError, ArgumentError) as err:
        message = one_line_error(err, args[0] if args else None)
        if os.environ.get(TRACEBACK_ENV, "0") == "1" or message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


def one_line_error(err: BaseException, command: str | None) -> str | None:
    """The one line for an error the user can fix, or None (a bug: its traceback shows). Our own checks' messages
    name the value and the fix, also when jsonargparse wraps them (a constructor's check during instantiation);
    jsonargparse's own parse errors (a wrong type, an unknown or abbreviated option, a missing file) become their
    first lines, without the usage, and point to the command's help."""
    cause: BaseException | None = err
    while cause is not None:  # the innermost error of ours in the chain
        if isinstance(cause, (ValueError, OSError, TypeError)) and raised_by_this_package(cause):
            return " ".join(str(cause).split())
        cause = cause.__cause__ or cause.__context__
    if isinstance(err, ArgumentError) or "Parser key" in str(err) or "validate against" in str(err):
        skip = ("Given value", "Subtypes:", "Errors:", "Expected a <class 'NoneType'>", "tip:", "usage:")
        skip += ("Does not validate",)
        lines = [line.strip().removeprefix("- ") for line in str(err).splitlines() if line.strip()]
        text = " ".join(line for line in lines if not line.startswith(skip))
        where = f"python -m mmf_lightning {command} --help" if command else "python -m mmf_lightning --help"
        return f"{text}; see `{where}`"
    return None


def raised_by_this_package(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is in this package's code: our own
    checks, whose messages name the value and the fix (not a bug deep inside a library)."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return PACKAGE_DIR in Path(tb.tb_frame.f_code.co_filename).resolve().parents


def usage() -> str:
    lines = [f"usage: python -m mmf_lightning <command> [options]\n\n{DESCRIPTION}\n\ncommands:"]
    lines += [f"    {name:<18}{line}" for name, line in LIGHTNING_COMMANDS.items()]
    lines += [f"    {name:<18}{line}" for name, (_, _, line) in COMMANDS.items()]
    lines.append("\n`python -m mmf_lightning <command> --help` shows a command's options.")
    return "\n".join(lines)


class CommandParser(argparse.ArgumentParser):
    """argparse for the package's own commands, with the error the CLI promises: one line, ``error: <what>; see
    `<prog> --help```, exit status 2, no usage dump."""

    def error(self, message: str):
        print(f"error: {' '.join(message.split())}; see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(2)
