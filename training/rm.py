"""Training the HER reward model (generative pairwise judge): `RMRunConfig`, `run_rm`.

    # CPU smoke run: tiny random judge, automatic pairs from synthetic scenes (about a minute):
    her train rm --config training/configs/rm_tiny_cpu.yaml --output_dir runs/rm-tiny

    # Gemma-3-270M judge (the SDK's GGUF, dequantized), LoRA, pairs from converted CoSER data:
    her data convert coser King_Lear.json --out data/lear.jsonl --eval-ratio 0.1
    her train rm --config training/configs/rm_gemma3_270m.yaml samples=data/lear.jsonl \
        --output_dir runs/rm

    # Qwen3-32B judge on GPUs, teacher-judged pairs, then RL of the judge:
    accelerate launch --config_file training/configs/accelerate_zero3.yaml \
        -m her_sdk.training.rm --config training/configs/rm_qwen3_32b.yaml \
        --output_dir runs/her-rm-32b

Stages:
1. data — preference pairs: `pairs_file` (from `pairs.auto_pairs` or `pairs.teacher_rows`,
   JSONL) or, by default, automatic gold-vs-corrupted pairs built from `samples` (SFT samples:
   `synthetic:N` or a `her data convert` JSONL). Each pair becomes judge prompt/verdict rows in
   both candidate orders (`pairs.judge_sft_rows`), written to `OUTPUT/judge_data.jsonl`.
2. SFT of the judge on those verdicts — helper stage `training.sft` (trl SFTTrainer) with the
   options under `train:` (model, LoRA, steps, ...), loss on the verdict only.
3. optional RL of the judge (`rl_steps > 0`): GRPO from the SFT model with a verifiable reward,
   1 when the parsed verdict names the labelled candidate, else 0 (`verdict_reward`).
Held-out pairwise accuracy (both orders combined) is measured before and after when
`eval_pairs > 0`. Results: the adapter/model in OUTPUT (RL: OUTPUT/rl), `her_rm.json`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from her_sdk import ConfigError
from her_sdk.format import Message, render_chatml

from .common import (
    config_dict,
    load_causal_lm,
    load_config,
    load_rows,
    load_tokenizer,
    require_train_extra,
    resolve_model,
)
from .data import read_jsonl, write_jsonl
from .judge import parse_verdict
from .pairs import CORRUPTIONS, auto_pairs, judge_sft_rows
from .principles import PrincipleSet, load_principles

__all__ = [
    "RMResult",
    "RMRunConfig",
    "build_pair_data",
    "judge_accuracy",
    "run_rm",
    "verdict_reward",
]

log = logging.getLogger("her_sdk.training.rm")


@dataclass
class RMRunConfig:
    """A reward-model run; YAML keys are these field names (`train`/`rl` are nested)."""

    output_dir: str = "runs/rm"
    # data
    samples: str = "synthetic:96"  # gold turns: synthetic:N or an SFT-sample JSONL
    pairs_file: str | None = None  # prebuilt pairs (auto_pairs / teacher_rows JSONL)
    corruptions: list = field(default_factory=lambda: list(CORRUPTIONS))
    per_sample: int = 1
    both_orders: bool = True
    eval_every: int = 10  # when the data has no eval split: every n-th pair is held out
    # judge prompt
    principles: str | None = None  # a principles YAML (default: the packaged set)
    principle_ids: list | None = None  # a subset (small judges, short prompts)
    detail: str = "brief"  # "brief" | "full" principle descriptions
    max_history: int | None = 8
    # accuracy measurement (generative, greedy, both orders)
    eval_pairs: int = 0
    eval_max_tokens: int = 160
    eval_batch_size: int = 8
    # stage 2: SFTRunConfig options (training.sft), e.g. model, tiny, peft, max_steps
    train: dict = field(default_factory=dict)
    # stage 3: judge RL
    rl_steps: int = 0
    rl: dict = field(default_factory=dict)  # RLRunConfig-style GRPO options

    def __post_init__(self) -> None:
        bad = [c for c in self.corruptions if c not in CORRUPTIONS]
        if bad:
            raise ConfigError(f"unknown corruption(s) {bad}; use {list(CORRUPTIONS)}")
        if self.detail not in ("brief", "full"):
            raise ConfigError("detail must be brief or full")


@dataclass
class RMResult:
    output_dir: str
    pairs: dict
    sft: dict
    accuracy_before: dict | None
    accuracy_after: dict | None
    rl: dict | None
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _principles(cfg: RMRunConfig) -> PrincipleSet:
    return load_principles(cfg.principles).subset(cfg.principle_ids)


def build_pair_data(cfg: RMRunConfig) -> tuple[list[dict], list[dict]]:
    """(pairs, judge SFT rows) for `cfg`; every pair has a `split` (train / eval)."""
    if cfg.pairs_file:
        if not Path(cfg.pairs_file).exists():
            raise ConfigError(f"pairs file not found: {cfg.pairs_file}")
        pairs = read_jsonl(cfg.pairs_file)
    else:
        samples = load_rows(cfg.samples, None)
        pairs = auto_pairs(samples, kinds=cfg.corruptions, per_sample=cfg.per_sample)
    if not pairs:
        raise ConfigError("no preference pairs (are the samples from `her data convert`?)")
    if not any(p.get("split") == "eval" for p in pairs) and cfg.eval_every:
        for p in pairs:
            h = int(hashlib.sha1(str(p["id"]).encode()).hexdigest(), 16)
            p["split"] = "eval" if h % cfg.eval_every == 0 else "train"
    rows = judge_sft_rows(
        pairs,
        principles=_principles(cfg),
        detail=cfg.detail,
        both_orders=cfg.both_orders,
        max_history=cfg.max_history,
    )
    return pairs, rows


# ---------------------------------------------------------------------------------------------
# Accuracy and the verifiable reward
# ---------------------------------------------------------------------------------------------


def _prompt_text(messages: Sequence[dict]) -> str:
    return render_chatml([Message(m["role"], m["content"]) for m in messages])


def judge_accuracy(
    backend, rows: Sequence[dict], principles: PrincipleSet, *, max_tokens: int = 160
) -> dict[str, float]:
    """Pairwise accuracy of a judge on labelled rows (from `judge_sft_rows`, both orders).

    Per pair, the gold candidate's score in each order (1 win, .5 tie, 0 loss; unreadable
    verdicts are left out) is averaged; `accuracy` is the share of pairs whose combined score
    is above .5, `mean_score` its mean (abstained pairs count .5), `abstain` the share of
    unreadable verdicts, `consistent` the share of pairs with the same winner in both orders.
    `backend` needs `generate_batch` (TransformersBackend) or a her_sdk Backend.
    """
    prompts = [_prompt_text(r["prompt"]) for r in rows]
    if hasattr(backend, "generate_batch"):
        texts = backend.generate_batch(prompts, max_new_tokens=max_tokens)
    else:
        from her_sdk import Sampling

        texts = [
            "".join(backend.stream(p, sampling=Sampling(max_tokens=max_tokens, temperature=0)))
            for p in prompts
        ]
    by_pair: dict[str, list[float | None]] = {}
    unread = 0
    for r, t in zip(rows, texts, strict=True):
        v = parse_verdict(t, principles)
        pid = r["id"].rsplit(":", 1)[0]
        if v is None:
            unread += 1
            by_pair.setdefault(pid, []).append(None)
            continue
        s = 0.5 if v.better == "tie" else float(v.better == r["label"])
        by_pair.setdefault(pid, []).append(s)
    scores, consistent, n = [], 0, len(by_pair)
    for ss in by_pair.values():
        got = [s for s in ss if s is not None]
        scores.append(sum(got) / len(got) if got else 0.5)
        consistent += len(got) == 2 and got[0] == got[1]
    return {
        "pairs": n,
        "accuracy": sum(s > 0.5 for s in scores) / max(1, n),
        "mean_score": sum(scores) / max(1, n),
        "abstain": unread / max(1, len(rows)),
        "consistent": consistent / max(1, n),
    }


def verdict_reward(
    prompts: Sequence[Any], completions: Sequence[Any], label: Sequence[str], **kw: Any
) -> list[float]:
    """Verifiable reward for RL of the judge: 1 when the verdict names the labelled candidate."""
    from .rl import completion_text

    out = []
    for c, lab in zip(completions, label, strict=True):
        v = parse_verdict(completion_text(c))
        out.append(1.0 if v is not None and v.better == lab else 0.0)
    return out


verdict_reward.__name__ = "verdict"


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _load_judge(spec, tokenizer, adapter_dir: str | None, batch_size: int = 8):
    from .hf_backend import TransformersBackend

    model = load_causal_lm(spec)
    if adapter_dir and (Path(adapter_dir) / "adapter_config.json").exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    elif adapter_dir:
        from .common import ModelSpec

        model = load_causal_lm(ModelSpec(adapter_dir))
    return TransformersBackend(model, tokenizer, batch_size=batch_size)


def run_rm(cfg: RMRunConfig) -> RMResult:
    require_train_extra()
    from .sft import SFTRunConfig, run_sft

    t0 = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ps = _principles(cfg)
    pairs, rows = build_pair_data(cfg)
    data_file = out / "judge_data.jsonl"
    write_jsonl(data_file, rows)
    kinds: dict[str, int] = {}
    for p in pairs:
        kinds[p.get("kind") or "teacher"] = kinds.get(p.get("kind") or "teacher", 0) + 1
    eval_rows = [r for r in rows if r["split"] == "eval"]
    pair_info = {
        "pairs": len(pairs),
        "rows": len(rows),
        "eval_rows": len(eval_rows),
        "kinds": kinds,
    }
    log.info("judge data: %s", pair_info)

    sft_over = {
        "train_file": str(data_file),
        "train_split": "train",
        "eval_split": "eval",
        **cfg.train,
        "output_dir": str(out),
    }
    if sft_over.get("model", "tiny") == "tiny" and "texts" not in (sft_over.get("tiny") or {}):
        # A tiny tokenizer trained on judge text too keeps judge prompts short (tests, smoke runs).
        texts = [_prompt_text(r["prompt"] + r["completion"]) for r in rows[:24]]
        sft_over["tiny"] = {**(sft_over.get("tiny") or {}), "texts": texts}
    if cfg.rl_steps > 0 and sft_over.get("peft", "lora") != "none":
        sft_over["save_merged"] = True  # the judge's RL starts from the merged SFT model
    sft_cfg = load_config(SFTRunConfig, None, sft_over)
    spec = resolve_model(
        sft_cfg.model, gguf_file=sft_cfg.gguf_file, tiny=sft_cfg.tiny, work_dir=out
    )
    tok = load_tokenizer(spec, sft_cfg.chat_template)
    eval_sel = []
    if cfg.eval_pairs > 0:
        ids = list(dict.fromkeys(r["id"].rsplit(":", 1)[0] for r in eval_rows))[: cfg.eval_pairs]
        keep = set(ids)
        eval_sel = [r for r in eval_rows if r["id"].rsplit(":", 1)[0] in keep]

    before = None
    if eval_sel:
        before = judge_accuracy(
            _load_judge(spec, tok, None, cfg.eval_batch_size),
            eval_sel,
            ps,
            max_tokens=cfg.eval_max_tokens,
        )
        log.info("judge accuracy before: %s", before)
    sft_res = run_sft(sft_cfg)
    after = None
    if eval_sel:
        after = judge_accuracy(
            _load_judge(spec, tok, str(out), cfg.eval_batch_size),
            eval_sel,
            ps,
            max_tokens=cfg.eval_max_tokens,
        )
        log.info("judge accuracy after SFT: %s", after)

    rl_info = None
    if cfg.rl_steps > 0:
        rl_info = _judge_rl(cfg, out, spec, tok, rows, sft_cfg, ps, eval_sel)
    res = RMResult(
        output_dir=str(out),
        pairs=pair_info,
        sft=sft_res.as_dict(),
        accuracy_before=before,
        accuracy_after=after,
        rl=rl_info,
        seconds=round(time.perf_counter() - t0, 2),
    )
    (out / "her_rm.json").write_text(
        json.dumps({"stage": "rm", "config": config_dict(cfg), "result": res.as_dict()}, indent=2)
    )
    return res


def _judge_rl(cfg: RMRunConfig, out: Path, spec, tok, rows: list[dict], sft_cfg, ps, eval_sel):
    """GRPO of the SFT judge with the verifiable verdict reward."""
    from .common import ModelSpec
    from .rl import RLRunConfig, build_grpo_trainer

    start = ModelSpec(str(out / "merged")) if sft_cfg.peft != "none" else ModelSpec(str(out))
    rl_dir = out / "rl"
    opts = {
        "model": start.path,
        "chat_template": sft_cfg.chat_template,
        "dtype": sft_cfg.dtype,
        "max_steps": cfg.rl_steps,
        "judge": "none",
        "reward_weights": {"format": 1.0},
        "output_dir": str(rl_dir),
        "seed": sft_cfg.seed,
        **cfg.rl,
    }
    rl_cfg = load_config(RLRunConfig, None, opts)
    train = [r for r in rows if r["split"] == "train"]
    data = [{"prompt": _prompt_text(r["prompt"]), "label": r["label"]} for r in train]
    trainer = build_grpo_trainer(
        rl_cfg, data, [verdict_reward], [1.0], model_spec=start, tokenizer=tok
    )
    trainer.train()
    trainer.save_model(str(rl_dir))
    tok.save_pretrained(str(rl_dir))
    trace = [float(h["reward"]) for h in trainer.state.log_history if "reward" in h]
    info: dict[str, Any] = {
        "steps": int(trainer.state.global_step),
        "output_dir": str(rl_dir),
        "reward_first": trace[0] if trace else None,
        "reward_last": trace[-1] if trace else None,
    }
    if eval_sel:
        from .hf_backend import TransformersBackend

        info["accuracy"] = judge_accuracy(
            TransformersBackend(trainer.model, tok), eval_sel, ps, max_tokens=cfg.eval_max_tokens
        )
    return info


def main(argv: list[str] | None = None) -> None:
    """`python -m her_sdk.training.rm --config FILE [key=value ...]` (for accelerate launch)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--output_dir", default=None)
    p.add_argument("overrides", nargs="*", help="key=value overrides (train.max_steps=2, ...)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(RMRunConfig, a.config, a.overrides, output_dir=a.output_dir)
    print(json.dumps(run_rm(cfg).as_dict(), indent=2))


if __name__ == "__main__":
    main()
