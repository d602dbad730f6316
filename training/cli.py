"""The ``science-t2i`` command.

Each subcommand lives in its own module under ``training/commands/`` exposing
``register(subparsers)``, which adds a parser whose ``func(args) -> int`` runs it.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ..nodes import _comfy
from ..nodes.errors import ScienceT2IError
from .core.preflight import disk_full_error, is_disk_full

# Subcommand modules, in help order.
COMMANDS: list[str] = ["score", "eval_reward", "eval_t2i", "bench", "eval_scigen", "imgcoder",
                       "synth_data", "validate_workflow", "sft", "train_sciscore", "stage2"]

# Loggers of optional libraries whose import-time noise says nothing about the run:
# bitsandbytes, on CPUs with AVX512-BF16, tries to fetch an optional kernel from the Hub at
# import and warns when it cannot (offline, or an untrusted repository), then falls back by
# itself. torchao (model.base) registers an enum the installed torch already handles, and
# diffusers warns about torchao-serialized checkpoints, which the pack never loads.
QUIET_LOGGERS = {"bitsandbytes.backends.cpu.ops": "kernels-community",
                 "torch.utils._pytree": "is an Enum subclass",
                 "diffusers.quantizers.torchao.torchao_quantizer": "Unable to import `torchao`",
                 # from_single_file with a dtype, when no module asks for float32
                 "diffusers.models.modeling_utils": "should be kept in float32: []"}


class _DropMessages(logging.Filter):
    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def filter(self, record: logging.LogRecord) -> bool:
        return self.marker not in record.getMessage()


def quiet_optional_libraries() -> None:
    for name, marker in QUIET_LOGGERS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(marker))


# exit status of a command whose output pipe was closed early (`... | head`): a shell's
# 128 + SIGPIPE, what a tool killed by the signal reports
EXIT_PIPE_CLOSED = 141


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="science-t2i",
        description="Science-T2I: SciScore scoring, evaluation and FLUX fine-tuning.")
    parser.add_argument("--models-dir", default=None,
                        help="ComfyUI-style models directory (default: $SCIENCE_T2I_MODELS "
                             "or ./models)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).register(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, except that a trainer's key=value overrides may also follow its
    flags (``sft a.b=1 --resume c.d=2``): argparse fills the overrides positional once, so
    the later ones come back unrecognised; they are appended in command-line order."""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all(
            "=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (so a BrokenPipeError came from it, not
    from a socket); True where that cannot be told."""
    try:
        import select
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True


def _silence_stdout() -> None:
    """Point stdout at the null device, so the interpreter's last flush of what is still
    buffered does not fail again on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    quiet_optional_libraries()
    if args.models_dir:
        _comfy.set_models_dir(args.models_dir)
    try:
        # SCIENCE_T2I_NO_PROGRESS=1 silences the libraries' bars as well as the pack's
        with _comfy.quiet_progress(not _comfy.progress_enabled()):
            code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        _silence_stdout()
        return EXIT_PIPE_CLOSED
    except ScienceT2IError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        print(f"error: {disk_full_error(exc, None)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
