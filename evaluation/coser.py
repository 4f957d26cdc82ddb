"""`her eval coser`: CoSER's Given-Circumstance Acting (GCA) benchmark on her_sdk backends.

What it follows, file by file (CoSER: repository Neph0s/CoSER; HER: cydu24/HER, `eval_code/`):

- Simulation: CoSER `gca_evaluation/main.py` `gca_simulation`. Every name in
  `speaking_characters_w_env` except Environment is an actor agent; the environment model and
  the next-speaker predictor (NSP) are chat agents (CoSER `agent.py` `Agent`); every agent starts
  from "===Conversation Start===" and the first listed name speaks first; after each message the
  NSP names the next speaker; `<END CHAT>` is accepted only from round 5 (0-based `i_round >= 5`),
  at most 20 rounds; an invalid, repeated or early prediction falls back to a random choice among
  the major characters and Environment minus the current speaker. Environment and NSP see a
  character's message as `Name: ` plus its thought-free text.
- Judging: CoSER `gca_judging`. One judge call per dimension (Storyline Consistency,
  Anthropomorphism, Character Fidelity, Storyline Quality) with the rubric of `_prompts.py`; the
  system prompt carries plot summary, scenario, profiles and the gold dialogue, the user message
  the simulated one; answers go through CoSER's `extract_json`, its JSON-fixing request and its
  answer check, regenerating up to 5 times (temperature 0, then 1). Per dimension
  `score = clip(100 - 5 * (S - 0.3 * R), 0, 100)`, S the sum of integer severities, R the
  simulation's non-Environment messages; a record's score is the mean of its four dimensions;
  the run's average is the mean of the four dimension means. BLEU and ROUGE-L
  (`utils.calculate_bleu_rouge`) are reported beside it, not averaged in.

Where the coser preset deliberately differs, and why:

- Actors are her_sdk `Character`s in one `Scene`, so isolation holds by construction: a
  character's prompt is its own persona (own profile, own motivation, the others' profiles, as
  CoSER's `get_character_prompt(fixed_template=True)` builds it) plus what it perceived: other
  characters' public actions and speech, narration. Prompts are her_sdk's HER prompts in the
  model's prompt style (HER tags; CoSER asks for `[thought] (action)`), which is what the models
  under test are trained on. CoSER's extra "Limit your response to 60 words" line is replaced by
  her_sdk's "Keep it to one short turn", and a first turn perceives "Environment: A moment
  passes." instead of an empty conversation start (her_sdk's rendering).
- Messages are judged in CoSER's notation: `Name: (action) speech`, thoughts removed (CoSER
  removes them from simulation and reference before judging); plans never reach the judge.
- No `fix_repeation`: CoSER trims repeated text from open models' replies before anyone sees it;
  HER's adaptation does not, and neither do we, so repetition is judged (Storyline Quality) and
  measured (`her eval quick`), not hidden.
- The NSP fallback draws from a seeded RNG over a sorted candidate list limited to agents that
  exist (CoSER draws from a hash-ordered set with `random.seed(42)` and can name a major
  character that has no agent). No RAG, no `continue_from` (CoSER options not in the protocol
  the paper reports).
- A judge answer that stays unparseable after the retries is a *parse failure*: counted, listed
  in results.json and the report, and left out of that dimension's mean (CoSER crashes there;
  HER scores it 50). An unreachable backend stops the run instead; rerun to resume.
- `{major_characters}` inside the Character Fidelity criteria stays literal, as in both
  references (see `judge_prompt`).
- The environment and NSP default to the actor (CoSER: gpt-4o and gpt-4o-mini), so an offline
  run needs no second model; pass `--env`/`--nsp` to match.
- Actor budget: 512 tokens, enough for her_sdk's short plans; a turn cut inside its plan says so
  (finish reason "plan_length", counted per record as `plan_cut_turns`).

The her preset reproduces HER's eval code (`eval_code/`, `run_coser.py` defaults and
`benchmarks/multi_turn/coser/`): temperature 0.7 for actor, environment and NSP, actor
max_tokens 4096, judge max_tokens 2048, at most 10 rounds, HER's NSP prompt rules and lenient
NSP parsing (no system-prompt re-input after an invalid prediction), agents that keep every
message apart, the judge shown inner thoughts as `[...]` (simulation and reference), float
severities counted, a flaw without severity counted 0, and HER's balanced JSON example in the
judge prompt. Its actors are HER's (`--actor-prompt her_eval`): one chat agent per character
with `get_character_prompt(model_type="her")` as system prompt ("CRITICAL RULES", the 200-word
limit; `plan=False` gives its "her_without_systhink" variant), a user message
"===Conversation Start===", then every message as its own chat message: the actor's own replies
whole (plan included) as assistant messages, everyone else's as user messages through HER's
clean-up (plan and thoughts removed, `Name: ` prefixed), rendered as ChatML (HER's
`format_qwen_prompt`, when the model's style is "her" or "chatml") with no prefill and no
grammar; the judge reads each reply as HER's does (plan removed, tags in CoSER notation, no name
added). The environment and the NSP are the judge model unless `--env`/`--nsp` say otherwise.

What still differs from HER's eval, and is never hidden (results.json records every setting):

- A reply cut inside a thought: HER removes only closed thinking blocks, so it would pass the
  open thought on to the others; here the open tail is cut from their view (`_her_public_view`).
- HER sends the speaker's name in each chat message's `name` field as well as in its text; an
  OpenAI-compatible environment or NSP gets the text only. A window too small for a long scene
  forgets the oldest messages (HER's run errors out).
- Parse failures are counted and left out of the mean, never scored 50 (above).
- With `--actor-prompt sdk` the her preset runs her_sdk Characters in the prompt style "her"
  (HER's *training* prompt, `her_sdk.format._her`) instead: what a game would run.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import msgspec

from her_sdk import Backend, Character, ConfigError, GenerationError, Scene, StateError
from her_sdk.format import (
    CONVERSATION_START,
    ENVIRONMENT,
    PUBLIC_CHANNELS,
    Message,
    Segment,
    check_prompt_style,
)

from . import _data
from ._backends import BackendPool, ChatAgent, plain_sampling
from ._metrics import (
    add_speaker_name,
    bleu_rouge,
    extract_json,
    extract_nsp,
    her_coser_notation,
    her_cut_in_plan,
    her_long_thinking_to_role,
    her_remove_inner_thoughts,
    her_remove_role_thinking,
    her_remove_system_thinking,
    judge_flaws,
    parse_nsp_her,
    remove_inner_thoughts,
    score_from_flaws,
)
from ._prompts import (
    DIMENSIONS,
    END_CHAT,
    FIX_JSON_PROMPT,
    NSP,
    environment_prompt,
    her_eval_character_prompt,
    judge_prompt,
    nsp_prompt,
    prompts_hash,
)
from ._report import atomic_json, write_outputs

__all__ = ["CoserSettings", "judge_record", "run_coser", "simulate"]

DIMENSION_KEYS = {d: d.lower().replace(" ", "_") for d in DIMENSIONS}


@dataclass
class CoserSettings:
    """Everything that decides a run's numbers; stored in results.json."""

    preset: str = "coser"
    actor: str | None = None  # spec; None = the embedded default model
    actor_model: str = ""
    env: str | None = None  # default: the actor (the judge under the her preset)
    env_model: str = ""
    nsp: str | None = None  # default: the environment model
    nsp_model: str = ""
    judge: str | None = None
    judge_model: str = ""
    max_rounds: int = 20
    min_end_round: int = 5
    temperature: float = 0.0  # actor, environment, NSP (CoSER: 0 on the first try)
    retry_temperature: float = 1.0
    actor_max_tokens: int = 512
    actor_prompt: str = "sdk"  # "sdk": her_sdk Characters; "her_eval": HER's eval actors
    actor_prompt_style: str | None = None  # None: the actor model's own (its metadata)
    agent_max_tokens: int = 512
    judge_temperature: float = 0.0
    judge_max_tokens: int = 8196
    judge_retries: int = 5
    judge_sees_thoughts: bool = False
    keep_plans: bool = False
    plan: bool = True
    grammar: bool | None = None  # None: her_sdk's default (on for real models)
    seed: int = 42
    n_ctx: int = 8192
    prompts_sha256: str = field(default_factory=prompts_hash)
    test_set_sha256: str = ""

    @classmethod
    def for_preset(cls, preset: str = "coser", **overrides) -> CoserSettings:
        if preset not in ("coser", "her"):
            raise ConfigError(f"unknown preset {preset!r} (coser or her)")
        base: dict = {"preset": preset}
        if preset == "her":
            base.update(
                temperature=0.7,
                retry_temperature=0.7,
                actor_max_tokens=4096,
                agent_max_tokens=4096,
                judge_max_tokens=2048,
                max_rounds=10,
                judge_sees_thoughts=True,
                keep_plans=True,
                actor_prompt="her_eval",
                actor_prompt_style="her",
                grammar=False,
            )
        base.update({k: v for k, v in overrides.items() if v is not None})
        s = cls(**base)
        if s.max_rounds < 1 or s.actor_max_tokens < 1:
            raise ConfigError("max_rounds and actor_max_tokens must be >= 1")
        if s.actor_prompt not in ("sdk", "her_eval"):
            raise ConfigError(f"unknown actor prompt {s.actor_prompt!r} (sdk or her_eval)")
        if s.actor_prompt == "her_eval" and s.grammar:
            raise ConfigError(
                "the her_eval actors run unconstrained, as HER's eval does; "
                "use --actor-prompt sdk for a grammar"
            )
        if s.actor_prompt_style is not None:
            check_prompt_style(s.actor_prompt_style, "-")  # "template" is checked on load
        if s.judge is None:
            raise ConfigError("her eval coser needs a judge (--judge SPEC)")
        return s

    def fingerprint(self) -> dict:
        """The settings a resumed run must share with the interrupted one."""
        return asdict(self)


# -- one record: the simulation ----------------------------------------------------------------


def _coser_text(segments: list[Segment], thoughts: bool) -> str:
    """A turn in CoSER notation: `[thought]` (when wanted), `(action)`, speech."""
    parts = []
    for s in segments:
        if s.channel == "speech":
            parts.append(s.text)
        elif s.channel == "action":
            parts.append(f"({s.text})")
        elif s.channel == "thought" and thoughts:
            parts.append(f"[{s.text}]")
    return " ".join(p for p in parts if p)


def _public_narration(raw: str) -> str:
    """The environment's reply without thinking blocks (it is narration, not a HER turn)."""
    return remove_inner_thoughts(raw)


_OPEN_THOUGHT = re.compile(r"<\s*\w*[_\s]*think(?:ing)?\s*>.*", re.S)
_ORPHAN_CLOSE = re.compile(r"(?:^|(?<=>))[^<>]*</\s*\w*[_\s]*think(?:ing)?\s*>")


def _her_public_view(message: str, speaker: str) -> str:
    """What HER's eval passes to everyone but the speaker (benchmark.py lines 629-664): long
    thoughts made role thoughts, plans removed, the speaker's name prefixed, thoughts removed.

    HER removes only closed thinking blocks, so a reply cut inside a thought would reach the
    others; here that tail (and text before a stray closing tag) is cut as well. On well-formed
    replies the view is HER's, byte for byte.
    """
    view = her_remove_system_thinking(her_long_thinking_to_role(message))
    view = her_remove_inner_thoughts(add_speaker_name(view, speaker))
    safe = _ORPHAN_CLOSE.sub("", _OPEN_THOUGHT.sub("", view))
    safe = re.sub(r"\[[^\]]*$", "", safe).strip()
    if safe != view:
        view = add_speaker_name(safe, speaker)
    return view


def _her_eval_actors(
    rec: dict, speakers: list[str], actor: Backend, settings: CoserSettings
) -> dict[str, ChatAgent]:
    """HER's eval actors (benchmark.py lines 386-465): one `CharacterAgent` per speaking
    character with `get_character_prompt(model_type="her")`, started by the conversation start;
    profiles as HER builds them (plot description, a blank line, the profile)."""
    profiles = _data.involved_profiles(rec, strip=True)
    agents: dict[str, ChatAgent] = {}
    for name in speakers:
        if name == ENVIRONMENT or name in agents:
            continue
        system = her_eval_character_prompt(
            book=str(rec.get("book", "Unknown")),
            character=name,
            profile=profiles.get(name, ""),
            scenario=str(rec.get("scenario", "")),
            motivation=_data.motivation(rec, name),
            other_profiles=profiles,
            plan=settings.plan,
        )
        agents[name] = ChatAgent(
            actor, system, label=name, merge=False, one_line=False, verbatim=True
        )
        agents[name].update("user", CONVERSATION_START)
    return agents


def simulate(
    rec: dict,
    index: int,
    actor: Backend,
    env: Backend,
    nsp: Backend,
    settings: CoserSettings,
    *,
    on_prompt: Callable[[str, str], None] | None = None,
) -> dict:
    """Run the GCA simulation of one record. Returns its transcript and statistics.

    `on_prompt(agent, prompt)` sees every prompt (tests use it to check isolation).
    """
    rng = random.Random(settings.seed * 1_000_003 + index)
    speakers = _data.speakers(rec)
    major = list(rec.get("major_characters") or [])
    scenario = str(rec.get("scenario", ""))
    sampling = plain_sampling(settings.temperature, settings.actor_max_tokens)
    her_eval = settings.actor_prompt == "her_eval"
    actors: dict[str, Character] = {}
    her_actors: dict[str, ChatAgent] = {}
    if her_eval:
        her_actors = _her_eval_actors(rec, speakers, actor, settings)
    else:
        profiles = _data.involved_profiles(rec)
        for name in speakers:
            if name == ENVIRONMENT or name in actors:
                continue
            actors[name] = Character(
                persona=_data.persona_for(rec, name, profiles),
                model=actor,
                plan=settings.plan,
                keep_plans=settings.keep_plans,
                grammar=settings.grammar,
                sampling=sampling,
            )
    scene = Scene(list(actors.values()), seed=settings.seed + index) if actors else None

    merge = settings.preset == "coser"  # HER's agents keep every message apart
    env_agent = ChatAgent(
        env, environment_prompt(major, scenario, rng), label=ENVIRONMENT, merge=merge
    )
    nsp_system = nsp_prompt(speakers, scenario, preset=settings.preset)
    nsp_agent = ChatAgent(nsp, nsp_system, label="Next Speaker", merge=merge)
    for agent in (env_agent, nsp_agent):
        agent.update("user", CONVERSATION_START)

    def agent_sampling(retry: int = 0) -> object:
        temp = settings.temperature if retry == 0 else settings.retry_temperature
        return plain_sampling(temp, settings.agent_max_tokens, seed=settings.seed + index)

    def ask(agent: ChatAgent, who: str) -> str:
        if on_prompt is not None:
            on_prompt(who, agent.render()[0])
        return agent.chat(agent_sampling())

    def tell_others(speaker: str, view: str, raw: str) -> None:
        """HER's update of every agent after a message: the speaker keeps its own reply whole
        (plan included), the others, the environment and the NSP get the public view."""
        for name, agent in her_actors.items():
            if name == speaker:
                agent.update("assistant", raw)
            else:
                agent.update("user", view)
        for agent in (env_agent, nsp_agent):
            if agent is not env_agent or speaker != ENVIRONMENT:
                agent.update("user", view)

    transcript: list[dict] = []
    nsp_fallbacks = 0
    plan_cuts = 0
    end_reason = "max_rounds"
    current = speakers[0]
    t0 = time.perf_counter()
    for i_round in range(settings.max_rounds):
        if current == END_CHAT:
            end_reason = "end_chat"
            break
        if current == ENVIRONMENT:
            raw = ask(env_agent, ENVIRONMENT)
            env_agent.update("assistant", raw)
            if her_eval:
                narration = her_remove_system_thinking(raw)
                tell_others(ENVIRONMENT, _her_public_view(narration, ENVIRONMENT), narration)
            else:
                narration = _public_narration(raw)
                if narration and scene is not None:
                    scene.narrate(narration)
                nsp_agent.update("user", add_speaker_name(narration, ENVIRONMENT))
            transcript.append({"role": ENVIRONMENT, "content": narration, "raw": raw})
        elif her_eval:
            agent = her_actors[current]
            if on_prompt is not None:
                on_prompt(current, agent.render()[0])
            raw = agent.chat(sampling)
            stats = agent.last
            cut = her_cut_in_plan(raw)  # its budget ended inside the plan
            plan_cuts += cut
            tell_others(current, _her_public_view(raw, current), raw)
            judged = her_remove_system_thinking(raw)
            if not settings.judge_sees_thoughts:  # HER's eval_remove_role_thinking ablation
                judged = her_remove_role_thinking(judged)
            transcript.append(
                {
                    "role": current,
                    "content": her_coser_notation(judged),
                    "raw": raw,
                    "finish_reason": "plan_length"
                    if cut
                    else getattr(stats, "finish_reason", None),
                    "first_token_s": getattr(stats, "first_token_s", None),
                    "completion_tokens": getattr(stats, "completion_tokens", None),
                }
            )
        else:
            character = actors[current]
            if on_prompt is not None:
                on_prompt(current, character.prompt().text)
            assert scene is not None
            reply = scene.turn(character.name, private=True)
            plan_cuts += reply.finish_reason == "plan_length"
            segs = list(reply.segments)
            public = _coser_text([s for s in segs if s.channel in PUBLIC_CHANNELS], False)
            seen = add_speaker_name(public, current)
            env_agent.update("user", seen)
            nsp_agent.update("user", seen)
            transcript.append(
                {
                    "role": current,
                    "content": add_speaker_name(
                        _coser_text(segs, settings.judge_sees_thoughts), current
                    ),
                    "raw": reply.raw,
                    "finish_reason": reply.finish_reason,
                    "first_speech_s": reply.first_speech_s,
                    "completion_tokens": reply.completion_tokens,
                }
            )
        # Next-speaker prediction.
        raw = ask(nsp_agent, NSP)
        if settings.preset == "her":
            predicted = parse_nsp_her(raw, speakers, END_CHAT)
        else:
            predicted = extract_nsp(raw)
            if predicted is None:
                predicted = raw.split(":")[0].strip() if ":" in raw else raw
        valid = True
        if predicted == END_CHAT and i_round >= settings.min_end_round:
            nxt = END_CHAT
        elif predicted in speakers and predicted != current:
            nxt = predicted
        else:
            valid = False
            nsp_fallbacks += 1
            pool = (set(major) | {ENVIRONMENT}) & set(speakers)
            candidates = sorted(pool - {current}) or sorted(set(speakers) - {current})
            nxt = rng.choice(candidates) if candidates else END_CHAT
        transcript.append({"role": NSP, "content": predicted, "raw": raw, "next": nxt})
        if valid or settings.preset == "her":
            nsp_agent.update(
                "assistant", raw if valid and settings.preset == "coser" else predicted
            )
        else:
            nsp_agent.update("assistant", predicted)
            nsp_agent.update("user", nsp_system)  # CoSER re-inputs the system prompt
        current = nxt
    else:
        if current == END_CHAT:
            end_reason = "end_chat"
    return {
        "transcript": transcript,
        "rounds": sum(1 for m in transcript if m["role"] != NSP),
        "nsp_fallbacks": nsp_fallbacks,
        "plan_cut_turns": plan_cuts,
        "end_reason": end_reason,
        "seconds": time.perf_counter() - t0,
    }


# -- one record: the judge ---------------------------------------------------------------------


def _reference(rec: dict, thoughts: bool) -> list[dict]:
    out = []
    for m in rec["dialogues"]:
        msg = m["message"]
        if m["character"] != ENVIRONMENT and not thoughts:
            msg = remove_inner_thoughts(msg)
        out.append({"character": m["character"], "message": msg})
    return out


def _judge_once(
    judge: Backend, system: str, user: str, dimension: str, settings: CoserSettings
) -> tuple[list[dict] | None, list[str]]:
    """Ask the judge about one dimension; retries as CoSER's `get_response_json`."""
    agent = ChatAgent(judge, system, label="Answer")
    agent.update("user", user)
    replies: list[str] = []
    for attempt in range(settings.judge_retries + 1):
        temp = settings.judge_temperature if attempt == 0 else settings.retry_temperature
        sampling = plain_sampling(temp, settings.judge_max_tokens, seed=settings.seed + attempt)
        reply = _call(agent, sampling)
        replies.append(reply)
        answer = extract_json(reply)
        if answer is None:  # CoSER asks the judge to repair its JSON, then parses again
            fixer = ChatAgent(judge, "", label="Answer")
            fixer.messages = [Message("user", FIX_JSON_PROMPT.replace("{json_response}", reply))]
            fixed = _call(fixer, sampling)
            replies.append(fixed)
            answer = extract_json(fixed)
        flaws = judge_flaws(answer, dimension, DIMENSIONS, settings.preset)
        if flaws is not None:
            return flaws, replies
    return None, replies


def _call(agent: ChatAgent, sampling, tries: int = 3) -> str:
    """One chat call; transport failures are retried with a pause, then raised."""
    for attempt in range(tries):
        try:
            return agent.chat(sampling)
        except GenerationError:
            if attempt == tries - 1:
                raise
            time.sleep(2.0 * (attempt + 1))
    raise AssertionError("unreachable")


def judge_record(rec: dict, sim: dict, judge: Backend, settings: CoserSettings) -> dict:
    """Judge one simulated record on the four dimensions, plus BLEU and ROUGE-L."""
    simulation = [m for m in sim["transcript"] if m["role"] != NSP]
    simulation_str = "\n\n".join(m["content"].strip("\n") for m in simulation)
    reference = _reference(rec, settings.judge_sees_thoughts)
    reference_str = "\n\n".join(f"{m['character']}: {m['message']}".strip("\n") for m in reference)
    profiles = _data.involved_profiles(rec)
    profile_str = "\n\n".join(f"### {c}\n\n{p}" for c, p in profiles.items())
    actor_rounds = sum(1 for m in simulation if m["role"] != ENVIRONMENT)
    plot = rec.get("plot") or {}
    scores: dict[str, float | None] = {}
    flaws: dict[str, list[dict] | None] = {}
    failures: list[str] = []
    raw_answers: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    for dimension in DIMENSIONS:
        system = judge_prompt(
            dimension,
            book=str(rec.get("book", "")),
            plot_summary=str(plot.get("summary", "")),
            scenario=str(rec.get("scenario", "")),
            character_profiles=profile_str,
            original_conversation=reference_str,
            major_characters=list(rec.get("major_characters") or []),
            preset=settings.preset,
        )
        found, replies = _judge_once(judge, system, simulation_str, dimension, settings)
        key = DIMENSION_KEYS[dimension]
        raw_answers[key] = replies
        flaws[key] = found
        if found is None:
            failures.append(key)
            scores[key] = None
        else:
            scores[key] = score_from_flaws(found, actor_rounds, settings.preset)
    dims = [scores[DIMENSION_KEYS[d]] for d in DIMENSIONS]
    scores["average"] = None if None in dims else sum(dims) / len(dims)  # type: ignore[arg-type]
    bleu, rouge_l, tokenizer = bleu_rouge(reference, simulation)
    scores["bleu"], scores["rouge_l"] = bleu, rouge_l
    return {
        "scores": scores,
        "flaws": flaws,
        "parse_failures": failures,
        "judge_replies": raw_answers,
        "actor_rounds": actor_rounds,
        "tokenizer": tokenizer,
        "seconds": time.perf_counter() - t0,
    }


# -- the run -----------------------------------------------------------------------------------


def run_coser(
    test_set: str | Path,
    out: str | Path,
    settings: CoserSettings,
    *,
    records: int | None = None,
    restart: bool = False,
    pool: BackendPool | None = None,
    on_record: Callable[[int, int, dict], None] | None = None,
    on_prompt: Callable[[str, str], None] | None = None,
) -> dict:
    """Run (or resume) a GCA evaluation; writes `out/` and returns the results.

    Each record is saved atomically under `out/records/` once simulated and again once judged,
    so a killed run continues where it stopped: judged records are kept, simulated ones are only
    judged. A directory holding a run with other settings is refused unless `restart`.
    """
    data, sha = _data.load_test_set(test_set, records)
    settings.test_set_sha256 = sha
    out = Path(out)
    run_file = out / "run.json"
    if run_file.exists() and not restart:
        try:
            previous = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise StateError(f"{run_file} is unreadable ({exc}); use --restart") from None
        if previous.get("kind") != "coser" or previous.get("settings") != settings.fingerprint():
            raise ConfigError(
                f"{out} holds a run with other settings; use another --out or --restart"
            )
    elif restart and (out / "records").is_dir():
        for f in (out / "records").glob("*.json"):
            f.unlink()
    atomic_json(
        run_file, {"kind": "coser", "settings": settings.fingerprint(), "test_set": str(test_set)}
    )
    own_pool = pool is None
    pool = pool or BackendPool(n_ctx=settings.n_ctx)
    try:
        actor = pool.get(
            settings.actor, settings.actor_model, "actor", prompt_style=settings.actor_prompt_style
        )
        # CoSER's environment is a model of its own (gpt-4o), HER's the judge; by default the
        # coser preset plays it with the actor (offline), the her preset with the judge.
        if settings.preset == "her" and settings.env is None:
            env_spec, env_model = settings.judge, settings.env_model or settings.judge_model
        else:
            env_spec = settings.env if settings.env is not None else settings.actor
            env_model = settings.env_model or (settings.actor_model if settings.env is None else "")
        env = pool.get(env_spec, env_model, "env")
        nsp_spec = settings.nsp if settings.nsp is not None else env_spec
        nsp_model = settings.nsp_model or (env_model if settings.nsp is None else "")
        nsp = pool.get(nsp_spec, nsp_model, "nsp")
        judge = pool.get(settings.judge, settings.judge_model, "judge")
        per_record: list[dict] = []
        for i, rec in enumerate(data):
            path = out / "records" / f"{i:04d}.json"
            state = _load_record(path)
            rid = _data.record_id(rec, i)
            if state is None or state.get("id") != rid:
                sim = simulate(rec, i, actor, env, nsp, settings, on_prompt=on_prompt)
                state = {
                    "id": rid,
                    "index": i,
                    "book": rec.get("book", ""),
                    "status": "simulated",
                    "simulation": sim,
                }
                atomic_json(path, state)
            if state["status"] != "judged":
                state["judgment"] = judge_record(rec, state["simulation"], judge, settings)
                state["status"] = "judged"
                atomic_json(path, state)
            summary = _summary(state)
            per_record.append(summary)
            results = _results(per_record, settings, len(data))
            atomic_json(out / "results.json", results)
            if on_record is not None:
                on_record(i + 1, len(data), summary)
        results = _results(per_record, settings, len(data))
        write_outputs(out, results)
        return results
    finally:
        if own_pool:
            pool.close()


def _load_record(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # a record file is written atomically; unreadable means foreign: redo
    return state if isinstance(state, dict) and "simulation" in state else None


def _summary(state: dict) -> dict:
    sim, judged = state["simulation"], state["judgment"]
    return {
        "id": state["id"],
        "index": state["index"],
        "book": state["book"],
        "scores": judged["scores"],
        "flaws": {k: len(v) if v is not None else None for k, v in judged["flaws"].items()},
        "parse_failures": judged["parse_failures"],
        "rounds": sim["rounds"],
        "actor_rounds": judged["actor_rounds"],
        "end_reason": sim["end_reason"],
        "nsp_fallbacks": sim["nsp_fallbacks"],
        "plan_cut_turns": sim.get("plan_cut_turns", 0),
        "seconds": {"simulation": sim["seconds"], "judge": judged["seconds"]},
        "tokenizer": judged["tokenizer"],
    }


def _results(per_record: list[dict], settings: CoserSettings, planned: int) -> dict:
    scores: dict[str, float | None] = {}
    n_scored: dict[str, int] = {}
    for d in DIMENSIONS:
        key = DIMENSION_KEYS[d]
        vals = [r["scores"][key] for r in per_record if r["scores"][key] is not None]
        scores[key] = sum(vals) / len(vals) if vals else None
        n_scored[key] = len(vals)
    dims = [scores[DIMENSION_KEYS[d]] for d in DIMENSIONS]
    scores["average"] = None if None in dims else sum(dims) / len(dims)  # type: ignore[arg-type]
    for key in ("bleu", "rouge_l"):
        vals = [r["scores"][key] for r in per_record]
        scores[key] = sum(vals) / len(vals) if vals else None
    failures = {
        DIMENSION_KEYS[d]: [r["id"] for r in per_record if DIMENSION_KEYS[d] in r["parse_failures"]]
        for d in DIMENSIONS
    }
    return {
        "kind": "coser",
        "records": len(per_record),
        "records_planned": planned,
        "scores": scores,
        "scored_records": n_scored,
        "parse_failures": {"total": sum(len(v) for v in failures.values()), **failures},
        "per_record": per_record,
        "settings": msgspec.to_builtins(settings.fingerprint()),
        "wall_seconds": sum(r["seconds"]["simulation"] + r["seconds"]["judge"] for r in per_record),
    }
