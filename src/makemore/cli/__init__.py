"""The `makemore` command: a table from command name to the function that runs it, and the error handling
that turns every user error into one line on stderr and exit status 2. Only the cli package prints."""

from __future__ import annotations

import difflib
import signal
import sys
from collections.abc import Callable

from makemore.cli import mix as mix_cli
from makemore.cli import plot as plot_cli
from makemore.cli.classify import cmd_classify
from makemore.cli.common import EXIT_USAGE, exit_on_signals, quiet_broken_pipe
from makemore.cli.datasets import cmd_datasets
from makemore.cli.export import cmd_export
from makemore.cli.generate import cmd_eval, cmd_sample, cmd_score
from makemore.cli.info import cmd_info
from makemore.cli.knn import cmd_knn
from makemore.cli.lr_find import cmd_lr_find
from makemore.cli.serve import cmd_serve
from makemore.cli.train import cmd_train
from makemore.errors import MakemoreError
from makemore.models import MODELS

COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "train": (cmd_train, "train a model (or fit a count model) on a text file"),
    "sample": (cmd_sample, "generate new items from a run"),
    "eval": (cmd_eval, "NLL / bits per char / perplexity on train, val, test or a file"),
    "score": (cmd_score, "log-probability of given strings"),
    "info": (cmd_info, "describe a run: model, size, steps, best val loss, data provenance"),
    "datasets": (cmd_datasets, "list the built-in datasets"),
    "plot": (plot_cli.cmd_plot, "pictures: loss curves, bigram heatmap, embeddings, activations, attention"),
    "lr-find": (cmd_lr_find, "learning-rate range test: loss against lr, and a suggested lr"),
    "export": (cmd_export, "a run as files that need no PyTorch: numpy, onnx or one html page"),
    "export-embeddings": (plot_cli.cmd_export_embeddings, "write a run's character embeddings as CSV or .npy"),
    "mix": (mix_cli.cmd_mix, "interpolate trained runs, weights fitted on val (a new run)"),
    "knn": (cmd_knn, "give a trained network a memory of its training data (kNN-LM, a new run)"),
    "classify": (cmd_classify, "the most probable label of items under a labelled run (p(label | item))"),
    "serve": (cmd_serve, "a local web page and JSON API: generate, score, train, inspect, compare"),
}


def usage() -> str:
    lines = ["usage: makemore COMMAND [options]   (makemore COMMAND --help for its options)", "", "commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "models: " + ", ".join(f"{name} ({spec.summary})" for name, spec in MODELS.items())]
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else EXIT_USAGE
    if argv[0] == "--version":
        from makemore import __version__

        print(f"makemore {__version__}")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        raise MakemoreError(unknown_command(argv[0]))
    return command[0](argv[1:])


def unknown_command(name: str) -> str:
    """The error for a command that does not exist, with the nearest one when it looks like a typo."""
    close = difflib.get_close_matches(name, COMMANDS, n=1)
    if close:
        return f"unknown command {name!r}; did you mean {close[0]!r}?"
    return f"unknown command {name!r}; choose from {', '.join(COMMANDS)}"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    encoding = (getattr(sys.stdout, "encoding", None) or "utf-8").lower().replace("-", "")
    if encoding != "utf8" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")  # a non-UTF-8 terminal: escape emoji, don't crash on them
    restore_signals = exit_on_signals()
    try:
        code = run(argv)
    except MakemoreError as error:
        message = str(error).replace("\r", "\\r").replace("\n", "\\n")  # one line, whatever a path contains
        print(f"makemore: error: {message}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt as error:
        signum = getattr(error, "signum", signal.SIGINT)
        print(f"makemore: {'terminated' if signum == signal.SIGTERM else 'interrupted'}", file=sys.stderr)
        code = 128 + signum
    except BrokenPipeError:
        code = quiet_broken_pipe()
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"makemore: error: {where}{error.strerror or error}", file=sys.stderr)
        code = EXIT_USAGE
    finally:
        restore_signals()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = quiet_broken_pipe()
    raise SystemExit(code)


__all__ = ["main", "run"]
