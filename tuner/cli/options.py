"""Options several subcommands share, declared once."""

from __future__ import annotations

import argparse

DEFAULT_CONFIG = "studies/default.yaml"
STORAGE_HELP = "Optuna storage URL (default: $TUNER_STORAGE, else sqlite:///storage/tuner.db)"


def add_config(p: argparse.ArgumentParser, help: str = "study YAML") -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"{help} (default: %(default)s)")


def add_storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help=STORAGE_HELP)


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: the study's, else auto)")
