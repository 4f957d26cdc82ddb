"""HER training pipelines (data, SFT, reward model, RL). Installed as `her_sdk.training`.

- `data`: `her data convert coser|her|sharegpt` -> trl prompt/completion JSONL (HER format).
- `plans`: `her data synth-plans` -> reverse-engineered third-person plans from a teacher.
- `sft`: `her train sft` (`SFTRunConfig`, `run_sft`) on trl's SFTTrainer, LoRA/QLoRA/full.
- `common`: config loading (YAML + key=value overrides), model/tokenizer/LoRA/data loading.
- `tiny`: tiny random-weight models and synthetic HER samples for CPU tests.

Importing this package is cheap; torch, transformers and trl load inside the functions that
need them (the `train` extra).
"""
