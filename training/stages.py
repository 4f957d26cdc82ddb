"""The training stages, in one table: what each is called, what its config holds, how it runs,
and which trainers its memory plan counts.

    STAGES["sft"].parse("training/configs/sft_tiny_cpu.yaml", ["max_steps=2"])
    STAGES["rl"].run(configs)

`python -m her_sdk.training` / `her train STAGE` (launch.py, cli.py), `her train check`
(check.py) and the tests iterate this table; a new stage is a module with its config
dataclasses, a run function and its trainers, plus one row here. A stage config file names its
stage (`stage: sft`), so no file name is ever read for it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from her_sdk import ConfigError

from . import rl, rm, sft
from .common import parse_config, read_config_file

__all__ = ["STAGES", "Stage", "stage_of"]

# One trainer a stage starts: (phase name, trainer "sft" | "grpo", the config section holding
# its keys ("" for the top level), its (HER arguments, ModelConfig, trainer config)).
Phase = tuple[str, str, str, tuple[Any, ...]]


@dataclass(frozen=True)
class Stage:
    """One row of the table (see the module doc).

    `help` and `example` (command-line overrides) are its CLI help; `config_types`: the
    dataclasses its file holds, in `parse_config` order; `runner`: configs -> a result with
    `as_dict()`; `trainer`: the one trainer it starts ("sft" or "grpo"), or
    `phases`: its trainers, for a stage that starts several; `validate`: checks across the
    file's sections beyond their types; `trainer_section` / `grpo_section`: where the trainer
    keys (launcher fields) and the GRPO keys sit in the file ("" the top level, None: none).
    """

    name: str
    help: str
    example: str  # of command-line overrides, for the CLI's help
    config_types: Callable[[], tuple[type, ...]]
    runner: Callable[..., Any]
    trainer: str = ""
    phases_of: Callable[..., list[Phase]] | None = None
    validate: Callable[..., None] | None = None
    trainer_section: str = ""
    grpo_section: str | None = None

    def parse(
        self,
        config: str | os.PathLike | None,
        overrides: Sequence[str] | dict[str, Any] | None = None,
        *,
        for_this_machine: bool = True,
    ) -> tuple[Any, ...]:
        """The typed configs of a run from a YAML file and overrides (a ConfigError names any
        unknown key or wrongly typed value, nested sections included, or a file of another
        stage)."""
        if config is not None:
            named = read_config_file(config).get("stage", self.name)
            if named != self.name:
                raise ConfigError(f"{config} is a {named!r} config, not {self.name!r}")
        configs = parse_config(
            self.config_types(), config, overrides, for_this_machine=for_this_machine
        )
        if self.validate is not None:
            self.validate(configs[0], for_this_machine=for_this_machine)
        return configs

    def run(self, configs: tuple[Any, ...]) -> dict[str, Any]:
        """Train; the run's result as a dict."""
        return self.runner(*configs).as_dict()

    def phases(self, configs: tuple[Any, ...]) -> list[Phase]:
        """The trainers the run starts (for `her train check`'s memory plan)."""
        if self.phases_of is not None:
            return self.phases_of(*configs)
        return [(self.name.upper(), self.trainer, "", configs)]


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "sft",
            "Supervised fine-tuning (trl SFTTrainer, LoRA/QLoRA/full).",
            "max_steps=10",
            sft.config_types,
            sft.run_sft,
            trainer="sft",
        ),
        Stage(
            "rm",
            "Train the HER reward model (pairwise judge): SFT on verdicts, optional RL of the "
            "judge.",
            "train.max_steps=2 rl_steps=4",
            rm.config_types,
            rm.run_rm,
            phases_of=rm.trainer_phases,
            validate=rm.check_nested,
            trainer_section="train",
            grpo_section="rl",
        ),
        Stage(
            "rl",
            "RL of a HER policy (trl GRPO) against the judge plus format/length/repetition "
            "rewards.",
            "judge_model=runs/rm max_steps=10",
            rl.config_types,
            rl.run_rl,
            trainer="grpo",
            grpo_section="",
        ),
    )
}


def stage_of(name: str) -> Stage:
    """The stage called `name`; a ConfigError lists the known ones."""
    try:
        return STAGES[name]
    except KeyError:
        raise ConfigError(f"unknown stage {name!r}; use one of {', '.join(STAGES)}") from None
