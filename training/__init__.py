"""HER training pipelines (data, SFT, reward model, RL). Installed as `her_sdk.training`.

- `data`: `her data convert coser|her|sharegpt` -> trl prompt/completion JSONL (HER format).
- `plans`: `her data synth-plans` -> reverse-engineered third-person plans from a teacher.
- `sft`, `rm`, `rl`: the stages (`her train sft|rm|rl`, or `python -m her_sdk.training STAGE`
  under `accelerate launch`), each with its HER-specific arguments beside trl's own configs.
- `stages`: the table of stages (name, config types, run, trainers for the memory plan) that
  `launch` (the one entry point), `cli` and `check` (`her train check`) iterate; `common`: typed
  config parsing (YAML + command-line overrides), model/tokenizer/data loading.
- `judge`, `pairs`, `principles`: the generative pairwise judge, its data and its principles.
- `tiny`: tiny random-weight models and synthetic HER samples for CPU tests.

Importing this package is cheap; torch, transformers and trl load inside the functions that
need them (the `train` extra).
"""
