"""``tuner``: Bayesian hyperparameter search for ROME knowledge editing.

    tuner launch --trials 200            # run the embedded default study
    tuner edit --fact 3 --layer 0        # one edit, with its trajectory
    tuner model build                    # train the embedded default model

User errors print one line and exit with code 2; tracebacks are for bugs."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Sequence

from tuner.errors import TunerError

# Each subcommand module registers its own parser (``register(sub)``) and names its entry point
# as "module:function", imported only when that subcommand runs (``tuner --help`` stays light).
SUBCOMMANDS = ("tuner.cli.edit", "tuner.cli.model", "tuner.cli.study_commands", "tuner.cli.trace", "tuner.cli.inspect")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="tuner", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def _quiet_libraries() -> None:
    """Process-wide logging policy, set once here (libraries' own defaults are chattier)."""
    import warnings

    import optuna

    for noisy in ("httpx", "urllib3", "filelock", "transformers", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # tuner records heartbeats itself around study.ask/tell (tuner.study.worker.Heartbeat)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _signals_raise() -> None:
    """SIGINT and SIGTERM both raise ``Interrupted``: one shutdown path for Ctrl-C, docker stop,
    systemd and a launcher stopping its workers."""
    import signal

    from tuner.signals import on_signal

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def main(argv: Sequence[str] | None = None) -> int:
    from tuner.signals import Interrupted
    from tuner.study.storage import ENV, RedactingFilter, redact, remember_secrets

    # every storage URL on the command line or in the environment: its password-like parts are
    # removed from all output, even where a library echoes a malformed URL's pieces
    remember_secrets(" ".join([*(sys.argv[1:] if argv is None else argv), os.environ.get(ENV, "")]))
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    _quiet_libraries()
    _signals_raise()
    module_name, func_name = args.run.split(":")
    import importlib

    try:
        return int(getattr(importlib.import_module(module_name), func_name)(args) or 0)
    except TunerError as exc:
        print(f"tuner: error: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except (Interrupted, KeyboardInterrupt) as exc:
        code = getattr(exc, "exit_code", 130)
        if not getattr(args, "quiet", False) and args.command != "launch":  # launch and its workers: one line
            print(f"tuner: {'terminated' if code == 143 else 'interrupted'}", file=sys.stderr)
        return code
    except BrokenPipeError:  # `tuner status | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EROFS, errno.ENOSPC) and exc.filename:
            print(f"tuner: error: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
