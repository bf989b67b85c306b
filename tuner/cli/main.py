"""``tuner``: Bayesian hyperparameter search for ROME knowledge editing.

    tuner launch --trials 200            # run the embedded default study
    tuner edit --fact 3 --layer 0        # one edit, with its trajectory
    tuner model build                    # train the embedded default model

User errors print one line and exit with code 2; tracebacks are for bugs."""

from __future__ import annotations

import argparse
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
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    _quiet_libraries()
    module_name, func_name = args.run.split(":")
    import importlib

    try:
        return int(getattr(importlib.import_module(module_name), func_name)(args) or 0)
    except TunerError as exc:
        print(f"tuner: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tuner: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tuner status | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
