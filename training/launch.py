"""The one entry point of the training stages: `parse_stage`, `run_stage`, `main`.

    python -m her_sdk.training sft --config training/configs/sft_tiny_cpu.yaml max_steps=2
    accelerate launch --config_file training/configs/accelerate_zero3.yaml \
        -m her_sdk.training rl --config training/configs/rl_qwen3_32b.yaml
    her train sft --config ...          # the same, through the `her` command line

Before renting GPUs, `her train check --config FILE` (training/check.py) resolves every config a
run reads and prints its per-GPU memory plan; a LoRA run's merge is a step of its own,
`her train merge` (training/merge.py), never part of a sharded launch.

A stage is a row of `stages.STAGES` (sft, rm, rl); its config file holds the keys of the stage's
dataclasses (see each stage module) and the command line overrides them (`key=value` or
`--key value`). This module parses and dispatches through that table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from her_sdk import ConfigError

from .stages import STAGES, stage_of

__all__ = ["STAGES", "main", "parse_stage", "run_stage"]


def parse_stage(
    stage: str,
    config: str | os.PathLike | None,
    overrides: Sequence[str] | dict[str, Any] | None = None,
    *,
    for_this_machine: bool = True,
) -> tuple[Any, ...]:
    """The typed configs of `stage` from a YAML file and overrides (a ConfigError names any
    unknown key or wrongly typed value, nested `train:`/`rl:` keys of an RM config included)."""
    return stage_of(stage).parse(config, overrides, for_this_machine=for_this_machine)


def run_stage(
    stage: str,
    config: str | os.PathLike | None,
    overrides: Sequence[str] | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Parse the stage's config, train, and return the run's result as a dict."""
    s = stage_of(stage)
    return s.run(s.parse(config, overrides))


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m her_sdk.training STAGE --config FILE [key=value | --key value ...]`."""
    p = argparse.ArgumentParser(prog="python -m her_sdk.training", description=main.__doc__)
    p.add_argument("stage", choices=list(STAGES))
    p.add_argument("--config", required=True, help="YAML config (training/configs/)")
    a, overrides = p.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = run_stage(a.stage, a.config, overrides)
    except ConfigError as exc:
        p.exit(2, f"error: {exc}\n")
    print(json.dumps(result, indent=2))
