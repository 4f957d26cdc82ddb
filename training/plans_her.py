"""HER's two-phase plans (`her data synth-plans --mode her`): long reverse-engineered plans.

    her data synth-plans data/her/enriched.jsonl --out data/her/planned.jsonl --mode her \
        --teacher http://HOST/v1#Qwen3-235B-A22B --rewriter http://HOST/v1#Qwen3-235B-A22B

What HER's release does (github.com/cydu24/HER, `data_process_code/step3_gen_systhinking/`), and
what this module does the same way:

1. Phase 1, one call per sample (`step3_2_construct_vulcan_data.py`): a reasoning teacher is
   shown the sample as a chat (the character's system prompt with its Requirements replaced by
   `PHASE1_REQUIREMENTS`, lines 21-27, then the conversation) and continues it *without* seeing
   the gold reply; the thinking it writes before its own reply is kept as a draft plan
   (`extract_thinking`, as `step3_3_extract_model_think.py` splits it: `</thinker>`,
   `</think>`, `</thinking>`, then a `Name: ` line, then the first `<role_thinking>`). Its reply
   itself is thrown away. Serve the teacher for completions (`http://HOST/v1#MODEL`), so its
   `<think>` stays in the text; a chat endpoint with a reasoning parser moves it out of reach.
2. Phase 2, one call per scene and character (`step3_7_construct_rewrite_data.py`): a rewriter
   is shown the scene as HER's JSON (a `system_info` entry, then every line up to the
   character's last turn; the character's turns with their draft plan, `[EMPTY - needs
   generation]` where phase 1 failed, and a length target when the draft is long) in HER's
   own prompt (`her_plan_rewrite_prompt.txt`, verbatim) and rewrites every draft so that it
   leads to the known reply, keeping its structure and length (±10% asked; accepted here
   within `length_band`), as "I need to portray X..." (the actor's voice).

Checks kept from the short mode (`plans.validate_plan`): no "user", third person or the actor's
frame, nothing from later turns of the scene; plus the length band and HER's plan sizes
(`min_chars` to `max_chars`). Both phases are resumable (phase 1 writes `OUT.phase1.jsonl`).

Where it differs from HER, on purpose: the rewriter sees the other characters' turns without
their thoughts (HER's JSON carries them, while its own prompt says the model cannot see them),
and only the lines up to the character's last turn (HER shows the whole scene; the future-leak
check would reject what that invites). This module writes data; it does not train.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from her_sdk import Backend, Persona
from her_sdk.format import (
    TAG,
    Heard,
    Message,
    Segment,
    Turn,
    build_her_messages,
    render_messages,
    render_perception,
    render_system_prompt,
    render_turn,
)

from .data import decode_her, encode_her, read_jsonl, render_sample
from .plans import JobReport, Outcome, _history_text, ask_teacher, run_jobs, validate_plan

__all__ = [
    "PHASE1_REQUIREMENTS",
    "extract_thinking",
    "mock_reasoning_teacher",
    "mock_rewriter",
    "rewrite_prompt",
    "synth_plans_her",
]

# step3_2_construct_vulcan_data.py lines 21-27 (REQUIREMENTS_TEMPLATE), `{ai_name}` filled.
PHASE1_REQUIREMENTS = """===Requirements===
Your output should include **thought**, **speech**, and **action**. Use <role_thinking>your thought</role_thinking> for thoughts, which others can't see. Use <role_action>your action</role_action> for actions, which others can see. These three elements (thought, speech and action) can appear multiple times and be freely interleaved.
(all thinking is invisible to others)

**Important: Only generate the NEXT SINGLE turn of dialogue. Do not generate multiple turns or continue the conversation beyond one response.**

Start your response with "{ai_name}: " followed by your role-play response."""  # noqa: E501

# step3_7_construct_rewrite_data.py line 460: the rewriter's system message.
REWRITE_SYSTEM = (
    "You are a JSON-only assistant. Output ONLY valid JSON arrays, with NO explanations, NO "
    "markdown headers, NO 'Here is...' phrases. Start directly with [ and end with ]."
)
EMPTY_DRAFT = "[EMPTY - needs generation]"


def _rewrite_template() -> str:
    return (Path(__file__).parent / "her_plan_rewrite_prompt.txt").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Phase 1: the draft plan, from a reasoning teacher that does not see the reply
# ---------------------------------------------------------------------------------------------


def phase1_messages(persona: Persona, history: Sequence[Heard | Turn]) -> list[Message]:
    """The sample as HER's step 3.2 shows it: HER's prompt, its Requirements replaced."""
    msgs = build_her_messages(persona, history, plan=False)
    system = re.sub(r"===Requirements===.*$", "", str(msgs[0].content), flags=re.S).strip()
    system += "\n\n" + PHASE1_REQUIREMENTS.replace("{ai_name}", persona.name)
    return [Message("system", system), *(Message(m.role, str(m.content)) for m in msgs[1:])]


_THINK_ENDS = ("</thinker>", "</think>", "</thinking>")


def extract_thinking(text: str) -> str:
    """The thinking before a reasoning model's reply (step3_3_extract_model_think.py, lines
    32-73): before the first closing think tag, else before a `Name: ` line, else before the
    first `<role_thinking>`; "" when none of these is there."""
    for tag in _THINK_ENDS:
        if tag in text:
            thinking = text.split(tag, 1)[0].strip()
            opener = f"<{tag[2:-1]}>"
            if thinking.startswith(opener):
                thinking = thinking[len(opener) :].strip()
            return thinking
    thought, action = f"<{TAG['thought']}>", f"<{TAG['action']}>"
    m = re.search(rf"\n([A-Z][a-zA-Z]+(?: [A-Z][a-zA-Z]+)*): ({thought}|{action}|[^<\n])", text)
    if m:
        return text[: m.start()].strip()
    at = text.find(thought)
    return text[:at].strip() if at >= 0 else ""


def mock_reasoning_teacher(prompt: str) -> str:
    """A deterministic stand-in for phase 1: a long think block, then a reply."""
    m = re.search(r'Start your response with "(.+?): "', prompt)
    name = m.group(1) if m else "The character"
    think = (
        f"Okay, I need to portray {name} in this moment. Context: the scene so far has put "
        f"{name} under pressure from the others, and the last line asks for an answer. "
        f"Goal: {name} wants to keep control of the conversation without showing fear.\n\n"
        f"Plan: {name} should answer briefly, keep the private worry out of the voice, and "
        "use one small action to show calm. Drafting: a short line, steady, then a pause."
    )
    return f"<think>\n{think}\n</think>\n\n{name}: <role_action>nods slowly</role_action>Go on."


# ---------------------------------------------------------------------------------------------
# Phase 2: the rewrite of every draft of a character in a scene
# ---------------------------------------------------------------------------------------------


def _public_text(item: Heard | Turn, name: str) -> str:
    if isinstance(item, Heard):
        return render_perception(item).split(": ", 1)[-1]
    public = Turn.from_segments(s for s in item.segments if s.channel in ("action", "speech"))
    return render_turn(public, name, label=False)


def rewrite_prompt(
    persona: Persona,
    history: Sequence[Heard | Turn],
    own: Sequence[tuple[int, Turn, str]],
    *,
    book: str = "",
) -> tuple[str, list[int]]:
    """HER's rewrite request for `persona`'s turns in a scene: (user message, the dialogue
    indices to revise). `history` is the scene up to the character's last turn as that turn's
    sample holds it, and `own` the character's turns in order: (index in `history` + its
    target at the end, the turn, its draft plan)."""
    name = persona.name
    info: dict[str, Any] = {"role": "system_info", "character_name": name, "book": book}
    info["scenario"] = persona.scenario
    if persona.profile:
        info["character_profile"] = persona.profile[:1500]
    if persona.background:
        info["background"] = persona.background
    if persona.goals:
        info["motivation"] = persona.goals
    others = {k: v[:500] for k, v in persona.others.items() if k != name and v}
    if others:
        info["other_character_profiles"] = others
    info["original_system_prompt"] = render_system_prompt(persona, plan=True)
    drafts = {i: (turn, draft) for i, turn, draft in own}
    entries: list[dict[str, Any]] = [info]
    items = list(history)
    for i in range(len(items) + 1):
        if i in drafts:
            turn, draft = drafts[i]
            reply = Turn.from_segments(s for s in turn.segments if s.channel != "plan")
            entry = {
                "dialogue_index": i,
                "character": name,
                "sys_thinking": draft or EMPTY_DRAFT,
                "enhanced_speech": render_turn(reply, name, label=False, spaced=True),
                "need_revise": True,
            }
            if len(draft) > 1000:
                entry["target_chars"] = f"~{len(draft)} chars (MUST match original length!)"
            entries.append(entry)
        elif i < len(items):
            item = items[i]
            speaker = item.speaker if isinstance(item, Heard) else name
            entries.append(
                {
                    "dialogue_index": i,
                    "character": speaker,
                    "enhanced_speech": _public_text(item, name),
                    "need_revise": False,
                }
            )
    prompt = _rewrite_template().format(
        character_name=name,
        full_dialogue_json=json.dumps(entries, indent=2, ensure_ascii=False),
        num_turns=len(drafts),
    )
    return prompt, sorted(drafts)


def _json_array(text: str) -> list | None:
    text = re.sub(r"^```(?:json)?\s*|\s*```\s*$", "", text.strip())
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end <= start:
        return None
    try:
        value = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) else None


def mock_rewriter(prompt: str) -> str:
    """A deterministic stand-in for phase 2: each draft kept, its length and structure too,
    with the reply's first words named as where the plan leads."""
    m = re.search(r"## Complete Dialogue Data.*?```json\n(.*?)\n```", prompt, re.S)
    entries = json.loads(m.group(1)) if m else []
    out = []
    for e in entries:
        if not e.get("need_revise"):
            continue
        draft = e["sys_thinking"]
        if draft == EMPTY_DRAFT:
            name = entries[0]["character_name"]
            draft = (
                f"I need to portray {name} answering the moment. Context: the others press "
                f"{name}. Goal: keep control. Plan: a brief, steady reply. " * 4
            ).strip()
        lead = " ".join(re.sub(r"<[^>]+>", " ", e["enhanced_speech"]).split()[:3])
        revised = draft.replace("Drafting:", f"Drafting toward '{lead}':", 1)
        out.append(
            {
                "dialogue_index": e["dialogue_index"],
                "revised_sys_thinking": revised,
                "revision_notes": "Type A: preserved format",
            }
        )
    return json.dumps(out)


def synth_plans_her(
    input_path: str | Path,
    out_path: str | Path,
    teacher: Backend,
    rewriter: Backend | None = None,
    *,
    concurrency: int = 4,
    retries: int = 2,
    timeout: float | None = 600.0,
    temperature: float = 0.7,
    think_tokens: int = 4096,
    rewrite_tokens: int = 8192,
    min_chars: int = 400,
    max_chars: int = 4000,
    length_band: float = 0.3,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> JobReport:
    """HER's two phases over the samples of `input_path` (see the module docstring); the
    rewriter defaults to the teacher. Returns the report of phase 2 (kept: scene-character
    groups whose every plan passed); phase 1's is in `stats["phase1"]`."""
    rewriter = rewriter if rewriter is not None else teacher
    rows = read_jsonl(input_path)
    out_path = Path(out_path)
    phase1_path = out_path.with_name(out_path.stem + ".phase1.jsonl")

    def draft(row: dict) -> Outcome:
        persona, history, _ = decode_her(row)

        def check(text: str) -> tuple[dict | None, str | None]:
            thinking = extract_thinking(text)
            if len(thinking) < min_chars // 4:
                return None, "no thinking before the reply"
            return {"id": row.get("id"), "scene": row.get("scene"), "thinking": thinking}, None

        prompt = render_messages(phase1_messages(persona, history), teacher)
        return ask_teacher(
            teacher,
            prompt,
            check,
            key=row.get("id"),
            retries=retries,
            timeout=timeout,
            temperature=temperature,
            max_tokens=think_tokens,
        )

    phase1 = run_jobs(rows, phase1_path, draft, concurrency=concurrency, limit=limit)
    drafts = {str(r["id"]): r["thinking"] for r in read_jsonl(phase1_path)}

    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[f"{r.get('scene') or r.get('id')}|{r.get('character', '')}"].append(r)
    jobs = [
        {"id": k, "samples": sorted(v, key=lambda r: int(r.get("turn", 0)))}
        for k, v in groups.items()
    ]
    lines_by_scene: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for r in rows:
        lines_by_scene[str(r.get("scene"))].append(
            (int(r.get("turn", 0)), str(r["completion"][0]["content"]))
        )

    def rewrite(job: dict) -> Outcome:
        samples = job["samples"]
        decoded = [decode_her(r) for r in samples]
        persona, last_history, last_target = decoded[-1]
        name = persona.name
        # The character's own turns in the last sample's history, in order, then its target.
        own_at = [i for i, h in enumerate(last_history) if isinstance(h, Turn)]
        own_at.append(len(last_history))
        if len(own_at) != len(samples):
            return Outcome(None, "the scene's samples do not line up with its history")
        own = [
            (i, target, drafts.get(str(row.get("id")), ""))
            for i, row, (_, _, target) in zip(own_at, samples, decoded, strict=True)
        ]
        prompt, indices = rewrite_prompt(
            persona, last_history, own, book=str(samples[0].get("book", ""))
        )
        rendered = render_messages(
            [Message("system", REWRITE_SYSTEM), Message("user", prompt)], rewriter
        )

        def check(text: str) -> tuple[dict | None, str | None]:
            answer = _json_array(text)
            if answer is None:
                return None, "unreadable answer"
            revised = {
                e.get("dialogue_index"): e.get("revised_sys_thinking")
                for e in answer
                if isinstance(e, dict)
            }
            plans: dict[int, str] = {}
            for (i, _turn, old), row, (p, history, target) in zip(
                own, samples, decoded, strict=True
            ):
                plan = revised.get(i)
                if not isinstance(plan, str) or not plan.strip():
                    return None, "a turn left unrevised"
                plan = plan.strip()
                if not min_chars <= len(plan) <= max_chars:
                    return None, "plan length out of HER's range"
                if old and abs(len(plan) - len(old)) > length_band * len(old):
                    return None, "plan length drifted from its draft"
                reply = Turn.from_segments(s for s in target.segments if s.channel != "plan")
                turn_no = int(row.get("turn", 0))
                known = "\n".join(
                    [
                        render_system_prompt(p, plan=False),
                        _history_text(p, history),
                        render_turn(reply, name),
                    ]
                )
                future = "\n".join(
                    t for k, t in lines_by_scene[str(row.get("scene"))] if k > turn_no
                )
                bad = validate_plan(
                    plan,
                    name,
                    known=known,
                    future=future,
                    min_words=min_chars // 8,
                    max_chars=max_chars,
                    actor_voice=True,
                )
                if bad is not None:
                    return None, bad
                plans[i] = plan
            return plans, None

        res = ask_teacher(
            rewriter,
            rendered,
            check,
            key=job["id"],
            retries=retries,
            timeout=timeout,
            temperature=temperature,
            max_tokens=rewrite_tokens,
        )
        if not res.records:
            return res
        plans = res.records[0]
        res.records = []
        for (i, _turn, old), row, (p, history, target) in zip(own, samples, decoded, strict=True):
            reply = [s for s in target.segments if s.channel != "plan"]
            planned = Turn.from_segments([Segment("plan", plans[i]), *reply])
            prompt_msgs, completion = render_sample(p, history, planned)
            res.records.append(
                {
                    **row,
                    "plan": True,
                    "plan_mode": "her",
                    "plan_source": getattr(rewriter, "name", "teacher"),
                    "plan_draft_chars": len(old),
                    "prompt": prompt_msgs,
                    "completion": completion,
                    "her": encode_her(p, history, planned),
                }
            )
        return res

    report = run_jobs(
        jobs, out_path, rewrite, concurrency=concurrency, limit=limit, progress=progress
    )
    report.stats["phase1"] = phase1.as_dict()
    return report
