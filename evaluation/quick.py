"""`her eval quick`: role-play metrics a CPU answers in minutes, without a judge.

For every character line of the records' gold dialogues (Environment lines are context only):

- the context is what that character perceived of the gold dialogue before the line (its own
  earlier lines with their thoughts, the others' public actions and speech, narration), as
  her_sdk renders it for the model (`Character.prompt()`, the model's own prompt style);
- *held-out NLL*: the negative log-likelihood of the gold line (as HER text after `NAME: `)
  per token (`Backend.logprobs`, on the same model and adapter that generate). It needs a
  backend that scores text (`supports_logprobs`: llama.cpp's); others report n/a;
- *generated turn*: the model plays the line itself (plan on, the grammar as chosen), inside a
  `Scene` with one other character of the record, so the other's next prompt can be checked for
  leaks. The metrics over these turns are the rows of `_table.METRICS` that name "quick", each
  defined in one line there and in report.md.

It is not the CoSER benchmark (`her eval coser`): no multi-agent simulation and no judge, so it
says whether a model keeps the format, its secrets and its own voice, not whether it plays well.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from her_sdk import Character, ContextOverflowError, Sampling, Scene
from her_sdk.format import FEWSHOT_PREAMBLE, PRIVATE_CHANNELS, PUBLIC_CHANNELS, render_turn

from . import _data
from ._backends import BackendPool
from ._metrics import mean, self_repetition
from ._prompts import ENVIRONMENT
from ._report import write_outputs
from ._table import aggregate
from .lines import (
    copies,
    forges_speaker,
    narrates,
    nested_quotes,
    strict_valid,
    turn_segments,
    words,
)

__all__ = ["QuickSettings", "run_quick", "strict_valid"]


@dataclass
class QuickSettings:
    model: str | None = None  # spec; None = the embedded default model
    model_name: str = ""
    adapter: str | None = None  # GGUF LoRA; None: load_model's default, "none": no adapter
    grammar: bool | None = None  # None: her_sdk's default (on for real models)
    max_tokens: int = 200
    temperature: float = 0.8
    seed: int = 0
    max_lines: int | None = None  # character lines per record (None: all)
    n_ctx: int = 8192
    test_set_sha256: str = ""


_PRIVATE_TAG = re.compile(
    r"<\s*/?\s*(system_think\w*|role_think\w*|think|thought|thinking)\s*>", re.I
)


def leaks(reply, other_prompt: str) -> bool:
    """Private text (a plan or thought of 12+ characters and 3+ words, or a private tag) in the
    reply's public channels or in another character's next prompt."""
    private = [s.text for s in reply.segments if s.channel in PRIVATE_CHANNELS]
    public = " ".join(s.text for s in reply.segments if s.channel in PUBLIC_CHANNELS)
    if _PRIVATE_TAG.search(public):
        return True
    for text in private:
        t = text.strip()
        if len(t) >= 12 and len(t.split()) >= 3 and (t in public or t in other_prompt):
            return True
    return False


def run_quick(
    test_set: str | Path,
    out: str | Path,
    settings: QuickSettings,
    *,
    records: int | None = None,
    pool: BackendPool | None = None,
    on_line: Callable[[int, int], None] | None = None,
) -> dict:
    """Score and generate every character line of the first `records` records; write `out/`."""
    data, sha = _data.load_test_set(test_set, records)
    settings.test_set_sha256 = sha
    own_pool = pool is None
    pool = pool or BackendPool(n_ctx=settings.n_ctx)
    backend = pool.get(settings.model, settings.model_name, "actor", adapter=settings.adapter)
    scores_nll = backend.supports_logprobs  # held-out NLL needs every position's logits
    plan_lines = []
    for rec in data:
        lines = [j for j, m in enumerate(rec["dialogues"]) if m["character"] != ENVIRONMENT]
        plan_lines.append(lines[: settings.max_lines] if settings.max_lines else lines)
    total_lines = sum(len(x) for x in plan_lines)
    done = 0
    per_record: list[dict] = []
    turns: list[dict] = []
    nll_sum, nll_tokens = 0.0, 0
    t_start = time.perf_counter()
    try:
        for i, rec in enumerate(data):
            profiles = _data.involved_profiles(rec)
            speakers = [s for s in _data.speakers(rec) if s != ENVIRONMENT]
            dialogues = rec["dialogues"]
            rec_nll, rec_tok, rec_turns = 0.0, 0, []
            for j in plan_lines[i]:
                who = dialogues[j]["character"]
                if who not in speakers:  # a line by someone not listed as speaking: context only
                    continue
                persona = _data.persona_for(rec, who, profiles)
                history = _data.gold_history(dialogues, j, who)
                if scores_nll:
                    scored = _score_line(backend, persona, history, dialogues[j], who)
                    if scored is not None:
                        rec_nll += scored[0]
                        rec_tok += scored[1]
                turn = _generate(rec, i, j, who, persona, history, backend, settings, speakers)
                rec_turns.append(turn)
                done += 1
                if on_line is not None:
                    on_line(done, total_lines)
            nll_sum += rec_nll
            nll_tokens += rec_tok
            turns += rec_turns
            per_record.append(
                {
                    "id": _data.record_id(rec, i),
                    "index": i,
                    "lines": len(rec_turns),
                    "nll_per_token": rec_nll / rec_tok if rec_tok else None,
                    "nll_tokens": rec_tok,
                    "format_validity": mean(float(t["valid"]) for t in rec_turns),
                    "leak_rate": mean(float(t["leak"]) for t in rec_turns),
                }
            )
    finally:
        if own_pool:
            pool.close()
    scores = aggregate("quick", turns)
    scores["nll_per_token"] = nll_sum / nll_tokens if nll_tokens else None
    results = {
        "kind": "quick",
        "records": len(data),
        "lines_scored": sum(1 for _ in turns),
        "turns_generated": len(turns),
        "nll_tokens": nll_tokens,
        "scores": scores,
        "per_record": per_record,
        "turns": turns,
        "settings": {
            **asdict(settings),
            "backend": getattr(backend, "name", "?"),
            "prompt_style": backend.prompt_style,
        },
        "wall_seconds": time.perf_counter() - t_start,
    }
    write_outputs(out, results)  # results.json, report.md, plots
    return results


def _score_line(backend, persona, history, gold: dict, who: str) -> tuple[float, int] | None:
    """(summed NLL in nats, tokens) of the gold line after its prompt; None if it does not
    fit the context window."""
    c = Character(persona=persona, model=backend, plan=False)
    c.memory = list(history)
    prompt = c.prompt(max_tokens=1)
    turn = render_turn(_data.gold_turn(gold["message"], who), persona.name)  # "NAME: …"
    # The target is what follows the prompt: the turn after the prefill ("NAME:" or nothing).
    target = turn[len(prompt.prefill) :] if turn.startswith(prompt.prefill) else turn
    try:
        logprobs = backend.logprobs(prompt.text, target)
    except ContextOverflowError:
        return None
    return (-sum(logprobs), len(logprobs)) if logprobs else None


def _generate(rec, i, j, who, persona, history, backend, settings, speakers) -> dict:
    dialogues = rec["dialogues"]
    sampling = Sampling(
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        seed=settings.seed * 100_003 + i * 1000 + j,
    )
    actor = Character(persona=persona, model=backend, grammar=settings.grammar, sampling=sampling)
    actor.memory = list(history)
    chars = [actor]
    other_name = next((s for s in speakers if s != who), None)
    if other_name is not None:
        other = Character(persona=_data.persona_for(rec, other_name), model=backend)
        other.memory = _data.gold_history(dialogues, j, other_name)
        chars.append(other)
    scene = Scene(chars)
    reply = scene.turn(actor.name, private=True)
    other_prompt = chars[1].prompt().text if len(chars) > 1 else ""
    public_text = " ".join(s.text for s in reply.segments if s.channel in PUBLIC_CHANNELS)
    others = [_data.safe_name(s) for s in speakers if s != who] + [ENVIRONMENT]
    recent = [m["message"] for m in dialogues[:j] if m["character"] not in (who, ENVIRONMENT)]
    recent = [" ".join(_data.gold_turn(t, "x").public().speech.split()) for t in recent[-5:]]
    sources = [*recent, FEWSHOT_PREAMBLE]
    by_channel = {
        c: [s.text for s in reply.segments if s.channel == c]
        for c in ("plan", "thought", "action", "speech")
    }
    n_words = {c: sum(len(words(t)) for t in v) for c, v in by_channel.items()}
    return {
        "record": i,
        "line": j,
        "character": who,
        "valid": strict_valid(reply.raw, persona.name, plan=actor.plan),
        "leak": leaks(reply, other_prompt),
        "forged_speaker": forges_speaker(public_text, others),
        "copy": copies(reply.speech, sources) if reply.speech else False,
        "self_repetition": self_repetition(public_text),
        "narration": narrates(reply.speech, who, others),
        "nested_quotes": nested_quotes(reply.turn),
        "segments": turn_segments(reply.turn),
        **{f"{c}_words": n for c, n in n_words.items()},
        "public_text": public_text,
        "first_speech_s": reply.first_speech_s,
        "completion_tokens": reply.completion_tokens,
        "finish_reason": reply.finish_reason,
    }
