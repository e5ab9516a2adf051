"""The ``layerwise`` command. Thin: parses arguments, calls the library, prints.

    layerwise train recipes/quick-mnist.toml          pretrain, back up, fine-tune, test
    layerwise evaluate runs/quick-mnist/finetuned     test accuracy of a saved classifier
    layerwise predict runs/quick-mnist/finetuned x.npz --out predictions.npz
    layerwise data fetch mnist                        download MNIST into the user cache

``parser`` reads the arguments, ``commands`` and ``tools`` hold one function per
command, and this module runs ``main``: errors by kind, Ctrl-C, warnings as one line.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
import warnings

from layerwise._checks import LayerwiseError
from layerwise.cli.commands import _err
from layerwise.cli.parser import build_parser


def _say_stopping() -> None:
    print(
        "\nlayerwise: stopping after this batch and saving a checkpoint (Ctrl-C again to stop now)",
        file=sys.stderr,
        flush=True,
    )


_LIBRARY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The library's warnings (a legal but doubtful input) as one line of the command's
    own; any other library's as Python shows them."""
    if os.path.abspath(filename).startswith(_LIBRARY):
        print(f"layerwise: warning: {message}", file=sys.stderr, flush=True)
    else:
        print(warnings.formatwarning(message, category, filename, lineno, line), file=sys.stderr, end="")


def _debug(args) -> bool:
    """--debug or LAYERWISE_DEBUG=1: show the traceback of every error, not only of bugs."""
    return bool(getattr(args, "debug", False) or os.environ.get("LAYERWISE_DEBUG") == "1")


def main(argv: list[str] | None = None) -> int:
    from layerwise import runtime

    runtime.set_wait_policy()  # before anything imports torch: OpenMP reads it when torch loads
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        # the library's own warnings, each time (a second run in one process is warned too)
        warnings.filterwarnings("always", category=UserWarning, module=r"layerwise\.")
        warnings.showwarning = _show_warning
        return _run(args)


def _run(args) -> int:
    """Run the command: a clear error (status 2) for what a user can cause, 130 on Ctrl-C."""
    import signal
    import threading

    from layerwise.training.loop import LoopControl

    args.control = LoopControl()  # the job's: its stop request and batch hooks
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGINT)
        args.control.stop_on_first_interrupt(then=_say_stopping)
    try:
        return args.func(args)
    # ValueError: another library's word on bad input (a TOML parse); the two file errors
    # carry our own messages (a recipe or a folder that does not exist, an --out that does)
    except (LayerwiseError, ValueError, FileNotFoundError, FileExistsError) as e:
        if _debug(args):
            raise
        return _err(str(e))
    except OSError as e:  # a read-only folder, a full disk: the file, and what the system said
        if _debug(args):
            raise
        where = f" '{e.filename}'" if e.filename else ""
        kept = " The last checkpoint written is intact." if e.errno == errno.ENOSPC else ""
        return _err(f"cannot write or read{where}: {e.strerror or e}.{kept}")
    except KeyboardInterrupt as e:
        how = str(e) or (
            "continue with `layerwise train --resume RUN_FOLDER` (or `layerwise pretrain --resume "
            "FOLDER`, or the same `layerwise finetune` command)"
        )
        print(f"layerwise: interrupted; {how}", file=sys.stderr)
        return 130
    except Exception:  # a bug, not bad input: say so, with the traceback to report
        traceback.print_exc()
        print(
            "layerwise: internal error: this is a bug in layerwise, not in your input; please report it with "
            "the traceback above and the command you ran",
            file=sys.stderr,
        )
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
