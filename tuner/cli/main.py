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

DEFAULT_CONFIG = "studies/default.yaml"


def _add_edit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("edit", help="run one ROME edit and print its trajectory and metrics",
                       description="Run one ROME edit on one fact; the model is restored afterwards.")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="study YAML (default: %(default)s)")
    p.add_argument("--fact", type=int, default=0, help="index of the fact in the study's fact file (default: 0)")
    p.add_argument("--layer", type=int)
    p.add_argument("--v-lr", type=float, dest="v_lr")
    p.add_argument("--v-weight-decay", type=float, dest="v_weight_decay")
    p.add_argument("--steps", type=int, dest="v_num_grad_steps", help="v_num_grad_steps")
    p.add_argument("--clamp-norm-factor", type=float, dest="clamp_norm_factor")
    p.add_argument("--kl-factor", type=float, dest="kl_factor")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], dest="lr_schedule")
    p.add_argument("--mom2", action=argparse.BooleanOptionalAction, dest="mom2_adjustment",
                   help="use C⁻¹ in the update (mom2_adjustment)")
    p.add_argument("--seed", type=int, help="context-template seed")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: the study's, else auto)")
    p.add_argument("--json", action="store_true", help="print the whole result as one JSON object")
    p.set_defaults(run="tuner.cli.edit:run")


def _add_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="the embedded default model")
    msub = p.add_subparsers(dest="model_cmd", required=True)
    b = msub.add_parser("build", help="train (or reuse) the embedded default model and check it is editable")
    b.add_argument("--config", default=DEFAULT_CONFIG, help="study YAML whose model.kb/facts to use")
    b.add_argument("--arch", choices=["llama", "gpt2", "glm"], help="architecture (default: the study's)")
    b.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    b.add_argument("--force", action="store_true", help="retrain even if cached")
    b.set_defaults(run="tuner.cli.model:build")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuner", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_edit(sub)
    _add_model(sub)
    from tuner.cli import study_commands, trace

    study_commands.add_parsers(sub)
    trace.add_parser(sub, DEFAULT_CONFIG)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "filelock", "transformers", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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
