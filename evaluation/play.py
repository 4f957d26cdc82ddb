"""`her eval play`: seeded multi-turn game scenes, played through the public API, measured as a
game would judge the lines.

    her eval play --out runs/play                                  # the packaged scenes
    her eval play --scenes benchmarks/heldout_scenes.json --adapter none --out runs/play-base

A scenes file holds scenes of the project's own (never CoSER's): characters with personas and
secrets, a scripted player, and a script of steps — narration, the player's lines, and NPC turns
(at least a dozen per scene). Each scene is played as a game plays it: `Character`, `Scene`,
`scene.say` / `scene.narrate` / `scene.turn`, on a model from `load_model` (or any backend spec,
as `her eval quick` takes). Each character reads what it perceived, its own earlier turns
included, which is where a small model degenerates: single continuations (`her eval quick`)
never show that.

For every NPC turn the run records what the game metrics read (`_table.METRICS`, the rows that
name "play", each defined in one line there and in report.md): speech length, turn shape,
narration and quotations inside speech (`lines`), copying of what others said and repetition of
its own earlier lines (8-word runs), forged speakers, secret reveals, validity, time to first
speech. The scenes of `evaluation/scenes/play.json` are for developing; acceptance numbers come
from `benchmarks/heldout_scenes.json`, which nothing is trained or tuned on.

It is not a judge of quality: it says whether the lines fit a dialogue box, not whether they are
good.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from her_sdk import Character, DataError, Sampling, Scene, TurnShape
from her_sdk.format import ENVIRONMENT

from ._backends import BackendPool
from ._report import write_outputs
from ._table import aggregate
from .lines import (
    copies,
    forges_speaker,
    narrates,
    nested_quotes,
    reveals_secret,
    strict_valid,
    turn_segments,
    words,
)
from .quick import leaks

__all__ = ["PLAY_SCENES", "PlaySettings", "load_scenes", "run_play"]

PLAY_SCENES = Path(__file__).resolve().parent / "scenes" / "play.json"
_PERSONA_FIELDS = (
    "source",
    "profile",
    "background",
    "scenario",
    "goals",
    "secrets",
    "relationships",
    "others",
)
MIN_NPC_TURNS = 12


@dataclass
class PlaySettings:
    model: str | None = None  # spec; None = the embedded default model
    model_name: str = ""
    adapter: str | None = None  # GGUF LoRA; None: load_model's default, "none": no adapter
    grammar: bool | None = None  # None: her_sdk's default (on for real models)
    max_tokens: int | None = None  # None: a Character's default sampling
    temperature: float | None = None
    dry_multiplier: float | None = None  # llama.cpp's DRY sampler over the scene (None: off)
    seed: int = 0  # added to every scene's own seed
    n_ctx: int = 8192
    shape: str = "model"  # a TurnShape preset: "game", "default", "free", or "model" (its own)
    scenes: str = ""
    scenes_sha256: str = ""


def shape_named(name: str) -> TurnShape | None:
    """The `TurnShape` preset `name` names; "model": None (the model's own shape)."""
    return None if name == "model" else TurnShape.preset(name)


def load_scenes(path: str | Path | None = None) -> tuple[list[dict], str, str]:
    """(scenes, sha256, path) of a scenes file (default: the packaged `scenes/play.json`),
    checked: every scene has an id, characters with names, a script whose steps are `narrate`,
    `say` (the player) or `turn` (a character of the scene), and at least 12 NPC turns."""
    p = Path(path) if path is not None else PLAY_SCENES
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read scenes file {p}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(f"{p} is not JSON: {exc}") from None
    scenes = data.get("scenes") if isinstance(data, dict) else None
    if not isinstance(scenes, list) or not scenes:
        raise DataError(f"{p}: expected an object with a non-empty `scenes` list")
    ids = set()
    for i, sc in enumerate(scenes):
        where = f"{p}: scene {i}"
        if not isinstance(sc, dict) or not isinstance(sc.get("id"), str) or not sc["id"]:
            raise DataError(f"{where}: a scene is an object with an `id`")
        where = f"{p}: scene {sc['id']!r}"
        if sc["id"] in ids:
            raise DataError(f"{where}: duplicate id")
        ids.add(sc["id"])
        chars = sc.get("characters")
        if not isinstance(chars, list) or not chars:
            raise DataError(f"{where}: needs a non-empty `characters` list")
        names = []
        for c in chars:
            if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"]:
                raise DataError(f"{where}: every character needs a `name`")
            unknown = set(c) - {"name", *_PERSONA_FIELDS}
            if unknown:
                raise DataError(f"{where}: character {c['name']!r}: unknown {sorted(unknown)}")
            names.append(c["name"])
        script = sc.get("script")
        if not isinstance(script, list) or not script:
            raise DataError(f"{where}: needs a non-empty `script`")
        turns = 0
        for j, step in enumerate(script):
            if not isinstance(step, dict) or len({"narrate", "say", "turn"} & set(step)) != 1:
                raise DataError(f"{where}: step {j} must be one of narrate, say, turn")
            if "turn" in step:
                if step["turn"] not in names:
                    raise DataError(f"{where}: step {j}: {step['turn']!r} is not in the scene")
                turns += 1
            elif "say" in step and not sc.get("player"):
                raise DataError(f"{where}: step {j}: a `say` step needs the scene's `player`")
        if turns < MIN_NPC_TURNS:
            raise DataError(f"{where}: {turns} NPC turns; a scene needs at least {MIN_NPC_TURNS}")
    return scenes, hashlib.sha256(raw).hexdigest(), str(p)


def run_play(
    out: str | Path,
    settings: PlaySettings,
    *,
    scenes: str | Path | None = None,
    limit: int | None = None,
    pool: BackendPool | None = None,
    on_turn: Callable[[int, int], None] | None = None,
) -> dict:
    """Play every scene (the first `limit`), write `out/` (results.json, report.md, plots)."""
    specs, sha, path = load_scenes(scenes)
    if limit is not None:
        if limit < 1:
            raise DataError("--limit must be >= 1")
        specs = specs[:limit]
    settings.scenes, settings.scenes_sha256 = path, sha
    shape_named(settings.shape)  # a bad name fails before any model loads
    own_pool = pool is None
    pool = pool or BackendPool(n_ctx=settings.n_ctx)
    total = sum(1 for sc in specs for step in sc["script"] if "turn" in step)
    done = 0
    t0 = time.perf_counter()
    per_scene, turns = [], []
    try:
        backend = pool.get(settings.model, settings.model_name, "actor", adapter=settings.adapter)

        def progress() -> None:
            nonlocal done
            done += 1
            if on_turn is not None:
                on_turn(done, total)

        for sc in specs:
            scene_turns, transcript = _play_scene(sc, backend, settings, progress)
            turns += scene_turns
            per_scene.append(
                {
                    "id": sc["id"],
                    "title": sc.get("title", ""),
                    "turns": len(scene_turns),
                    "scores": aggregate("play", scene_turns),
                    "transcript": transcript,
                }
            )
    finally:
        if own_pool:
            pool.close()
    results: dict[str, Any] = {
        "kind": "play",
        "scenes": len(specs),
        "turns_generated": len(turns),
        "scores": aggregate("play", turns),
        "per_scene": per_scene,
        "turns": turns,
        "settings": {
            **asdict(settings),
            "backend": getattr(backend, "name", "?"),
            "prompt_style": backend.prompt_style,
        },
        "wall_seconds": time.perf_counter() - t0,
    }
    write_outputs(out, results)  # results.json, report.md, plots
    return results


def _play_scene(
    sc: dict, backend, settings: PlaySettings, progress: Callable[[], None]
) -> tuple[list[dict], list[dict]]:
    sampling = None
    if any(
        v is not None for v in (settings.max_tokens, settings.temperature, settings.dry_multiplier)
    ):
        base = Sampling(max_tokens=320)
        dry = {} if settings.dry_multiplier is None else {"dry_multiplier": settings.dry_multiplier}
        sampling = Sampling(
            max_tokens=settings.max_tokens or base.max_tokens,
            temperature=base.temperature if settings.temperature is None else settings.temperature,
            **dry,
        )
    chars = {
        c["name"]: Character(
            model=backend,
            grammar=settings.grammar,
            shape=shape_named(settings.shape),
            sampling=sampling,
            **{k: v for k, v in c.items() if k in ("name", *_PERSONA_FIELDS)},
        )
        for c in sc["characters"]
    }
    player = sc.get("player")
    scene = Scene(
        list(chars.values()),
        player=player,
        name=sc.get("title", sc["id"]),
        seed=int(sc.get("seed", 0)) + settings.seed,
    )
    everyone = [*chars, *([player] if player else [])]
    own: dict[str, list[str]] = {n: [] for n in chars}
    transcript: list[dict] = []
    out: list[dict] = []
    for step in sc["script"]:
        if "narrate" in step:
            scene.narrate(step["narrate"])
            transcript.append({"speaker": "", "text": step["narrate"]})
            continue
        if "say" in step:
            action = step.get("action")
            scene.say(player, step["say"], action)
            text = (f"({action}) " if action else "") + step["say"]
            transcript.append({"speaker": player, "text": text})
            continue
        name = step["turn"]
        heard = [
            e.text
            for e in scene.events
            if e.speaker != name and name in e.perceivers and e.kind != "narration"
        ]
        reply = scene.turn(name)
        character = chars[name]
        public = " ".join(s.text for s in reply.segments if s.channel in ("action", "speech"))
        others = [n for n in everyone if n != name] + [ENVIRONMENT]
        other_prompts = "\n".join(c.prompt().text for n, c in chars.items() if n != name)
        secret = character.persona.secrets
        out.append(
            {
                "scene": sc["id"],
                "character": name,
                "valid_turn": strict_valid(reply.raw, name, plan=character.plan)
                and reply.finish_reason not in ("length", "plan_length"),
                "speech_words": len(words(reply.speech)),
                "segments": turn_segments(reply.turn),
                "narration": narrates(reply.speech, name, others),
                "nested_quotes": nested_quotes(reply.turn),
                "copy_others": copies(public, heard),
                "own_repeat": copies(public, own[name]),
                "forged_speaker": forges_speaker(public, others),
                "secret_reveal": bool(reply.blocked_reveals) or reveals_secret(public, secret),
                "leak": leaks(reply, other_prompts),
                "public_text": public,
                "speech": reply.speech,
                "first_speech_s": reply.first_speech_s,
                "completion_tokens": reply.completion_tokens,
                "finish_reason": reply.finish_reason,
            }
        )
        own[name].append(public)
        transcript.append({"speaker": name, "text": reply.public_text, "npc": True})
        progress()
    return out, transcript
