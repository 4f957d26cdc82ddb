"""HerService: translates her.v1 messages to calls on her_sdk Characters and Scenes, and back.

It holds the id -> object registry and enforces the server's limits; every rule of the story
(who perceives what, parsing, knowledge isolation, private channels) is the SDK's. Errors raised
here or in the SDK are mapped to status codes by `_status` only.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from queue import Empty, SimpleQueue

import msgspec

from .._backends._base import Backend, CancelToken
from .._character import Character, Reply
from .._errors import ConfigError
from .._persona import Persona
from .._scene import Event, Scene
from .._state import dump_scene, scene_from_bytes
from ..format import PUBLIC_CHANNELS
from ._pb import pb, pb_grpc
from ._settings import ServerSettings
from ._status import LimitExceeded, NotFound, abort

__all__ = ["HerServicer"]

CHANNEL = {
    "plan": pb.CHANNEL_PLAN,
    "thought": pb.CHANNEL_THOUGHT,
    "action": pb.CHANNEL_ACTION,
    "speech": pb.CHANNEL_SPEECH,
}
EVENT_KIND = {
    "speech": pb.EVENT_KIND_SPEECH,
    "narration": pb.EVENT_KIND_NARRATION,
    "turn": pb.EVENT_KIND_TURN,
}
_UNLIMITED_TEXT = frozenset({"card_json"})  # bounded by the message size only


def _guard(fn: Callable) -> Callable:
    """Unary handler wrapper: check limits, map any exception to its status."""

    @functools.wraps(fn)
    def handler(self: HerServicer, request, context):
        try:
            self._check_limits(request)
            return fn(self, request, context)
        except Exception as exc:
            abort(context, exc)

    return handler


def _require(value: str, field: str) -> str:
    if not value or not value.strip():
        raise ConfigError(f"{field} is required")
    return value


class HerServicer(pb_grpc.HerServiceServicer):
    def __init__(self, model: Backend, settings: ServerSettings) -> None:
        self.model = model
        self.settings = settings
        self.characters: dict[str, Character] = {}
        self.scenes: dict[str, Scene] = {}
        self._scene_ids: dict[int, str] = {}  # id(Scene) -> scene id
        self._char_ids: dict[int, str] = {}  # id(Character) -> character id
        # Guards the registry and changes of scene membership; turns do not take it.
        self._lock = threading.RLock()
        self._pool = ThreadPoolExecutor(settings.max_workers, thread_name_prefix="her-turn")

    def close(self) -> None:
        """Stop the generation threads (call after the gRPC server has stopped)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- helpers ----------------------------------------------------------------------------------

    def _check_limits(self, msg) -> None:
        """Every text field <= max_text_chars, every list/map <= max_list_items, recursively."""
        limit, items = self.settings.max_text_chars, self.settings.max_list_items
        for field, value in msg.ListFields():
            if field.type == field.TYPE_STRING and not field.is_repeated:
                if len(value) > limit and field.name not in _UNLIMITED_TEXT:
                    raise LimitExceeded(f"{field.name} is longer than {limit} characters")
            elif field.is_repeated:
                if len(value) > items:
                    raise LimitExceeded(f"{field.name} has more than {items} entries")
                entries = value.items() if field.message_type and _is_map(field) else None
                if entries is not None:
                    for k, v in entries:
                        if len(k) > limit or len(v) > limit:
                            raise LimitExceeded(f"an entry of {field.name} is too long")
                elif field.type == field.TYPE_STRING:
                    if any(len(v) > limit for v in value):
                        raise LimitExceeded(f"an entry of {field.name} is too long")
                elif field.type == field.TYPE_MESSAGE:
                    for v in value:
                        self._check_limits(v)
            elif field.type == field.TYPE_MESSAGE:
                self._check_limits(value)

    def _scene(self, scene_id: str) -> Scene:
        _require(scene_id, "scene_id")
        try:
            return self.scenes[scene_id]
        except KeyError:
            raise NotFound(f"no scene with id {scene_id!r}") from None

    def _character(self, character_id: str) -> Character:
        _require(character_id, "character_id")
        try:
            return self.characters[character_id]
        except KeyError:
            raise NotFound(f"no character with id {character_id!r}") from None

    def _register_character(self, c: Character) -> str:
        with self._lock:
            if len(self.characters) >= self.settings.max_characters:
                raise LimitExceeded(f"the server holds {self.settings.max_characters} characters")
            cid = f"c-{uuid.uuid4().hex}"
            self.characters[cid] = c
            self._char_ids[id(c)] = cid
            return cid

    def _forget_character(self, cid: str) -> None:
        c = self.characters.pop(cid, None)
        if c is not None:
            self._char_ids.pop(id(c), None)
            if c.scene is not None:
                c.scene.remove(c.name)

    def _character_msg(self, c: Character) -> pb.Character:
        p = c.persona
        return pb.Character(
            id=self._char_ids.get(id(c), ""),
            persona=pb.Persona(
                name=p.name,
                source=p.source,
                profile=p.profile,
                background=p.background,
                scenario=p.scenario,
                goals=p.goals,
                secrets=p.secrets,
                relationships=p.relationships,
                others=p.others,
            ),
            scene_id=self._scene_ids.get(id(c.scene), "") if c.scene is not None else "",
            turns_taken=c.turns_taken,
            memory_items=len(c.memory),
        )

    def _scene_msg(self, scene: Scene, events: list[Event] | None = None) -> pb.Scene:
        with scene._lock:
            msg = pb.Scene(
                id=self._scene_ids.get(id(scene), ""),
                name=scene.name,
                characters=[
                    pb.Participant(character_id=self._char_ids.get(id(c), ""), name=n)
                    for n, c in scene.characters.items()
                ],
                players=scene.players,
                event_count=len(scene.events),
                events=[_event_msg(e) for e in events or ()],
            )
        if scene.seed is not None:
            msg.seed = scene.seed
        return msg

    # -- characters -------------------------------------------------------------------------------

    @_guard
    def CreateCharacter(self, request, context):
        which = request.WhichOneof("source")
        if which is None:
            raise ConfigError("persona or card_json is required")
        if which == "persona":
            p = request.persona
            persona = Persona(
                name=p.name,
                source=p.source,
                profile=p.profile,
                background=p.background,
                scenario=p.scenario,
                goals=p.goals,
                secrets=p.secrets,
                relationships=dict(p.relationships),
                others=dict(p.others),
            )
        else:
            _require(request.card_json, "card_json")
            persona = Persona.from_card(request.card_json)
            for f in ("name", "profile", "scenario"):
                if len(getattr(persona, f)) > self.settings.max_text_chars:
                    raise LimitExceeded(f"the card's {f} is longer than the text limit")
        s = request.settings
        kwargs: dict = {}
        if s.HasField("plan"):
            kwargs["plan"] = s.plan
        if s.allowed_actions:
            kwargs["actions"] = list(s.allowed_actions)
        if s.HasField("seed"):
            kwargs["seed"] = s.seed
        if s.HasField("max_memory"):
            kwargs["max_memory"] = s.max_memory
        c = Character(persona=persona, model=self.model, **kwargs)
        overrides: dict = {}
        if s.HasField("max_tokens"):
            overrides["max_tokens"] = s.max_tokens
        if s.HasField("temperature"):
            overrides["temperature"] = s.temperature
        if overrides:
            c.sampling = msgspec.structs.replace(c.sampling, **overrides)
        self._register_character(c)
        return self._character_msg(c)

    @_guard
    def GetCharacter(self, request, context):
        return self._character_msg(self._character(request.character_id))

    @_guard
    def DeleteCharacter(self, request, context):
        with self._lock:
            self._character(request.character_id)
            self._forget_character(request.character_id)
        return pb.DeleteResponse()

    # -- scenes -----------------------------------------------------------------------------------

    def _add_scene(self, scene: Scene) -> str:
        if len(self.scenes) >= self.settings.max_scenes:
            raise LimitExceeded(f"the server holds {self.settings.max_scenes} scenes")
        sid = f"s-{uuid.uuid4().hex}"
        self.scenes[sid] = scene
        self._scene_ids[id(scene)] = sid
        return sid

    @_guard
    def CreateScene(self, request, context):
        with self._lock:
            members = [self._character(cid) for cid in request.character_ids]
            if len(self.scenes) >= self.settings.max_scenes:
                raise LimitExceeded(f"the server holds {self.settings.max_scenes} scenes")
            scene = Scene(
                name=request.name, seed=request.seed if request.HasField("seed") else None
            )
            try:
                for name in request.players:
                    scene.add_player(name)
                for c in members:
                    scene.add(c)
            except Exception:
                for name in list(scene.characters):  # undo: nobody stays in a dead scene
                    scene.remove(name)
                raise
            self._add_scene(scene)
            return self._scene_msg(scene)

    @_guard
    def GetScene(self, request, context):
        scene = self._scene(request.scene_id)
        events = None
        if request.include_events:
            events = scene.transcript(request.viewer or None)
        return self._scene_msg(scene, events)

    @_guard
    def DeleteScene(self, request, context):
        with self._lock:
            scene = self._scene(request.scene_id)
            for name, c in list(scene.characters.items()):
                cid = self._char_ids.get(id(c))
                if request.keep_characters or cid is None:
                    scene.remove(name)
                else:
                    self._forget_character(cid)
            del self.scenes[request.scene_id]
            self._scene_ids.pop(id(scene), None)
        return pb.DeleteResponse()

    @_guard
    def AddParticipant(self, request, context):
        with self._lock:
            scene = self._scene(request.scene_id)
            which = request.WhichOneof("who")
            if which == "character_id":
                scene.add(self._character(request.character_id))
            elif which == "player":
                scene.add_player(request.player)
            else:
                raise ConfigError("character_id or player is required")
            return self._scene_msg(scene)

    @_guard
    def Say(self, request, context):
        scene = self._scene(request.scene_id)
        _require(request.speaker, "speaker")
        event = scene.say(
            request.speaker, request.text, list(request.actions), to=list(request.to) or None
        )
        return _event_msg(event)

    @_guard
    def Narrate(self, request, context):
        scene = self._scene(request.scene_id)
        event = scene.narrate(request.text, to=list(request.to) or None)
        return _event_msg(event)

    # -- turns ------------------------------------------------------------------------------------

    def Turn(self, request, context) -> Iterator[pb.TurnResponse]:
        try:
            self._check_limits(request)
            scene = self._scene(request.scene_id)
            name = request.character or scene.next_speaker()
            if name not in scene.characters:
                raise NotFound(f"no character named {name!r} in scene {request.scene_id!r}")
            private = request.include_private and self.settings.expose_thoughts
            cancel = CancelToken()
            # Client cancel or deadline: stop generation before the next token.
            context.add_callback(cancel.cancel)
            stream = scene.stream(
                name,
                private=private,
                seed=request.seed if request.HasField("seed") else None,
                max_tokens=request.max_tokens if request.HasField("max_tokens") else None,
                temperature=request.temperature if request.HasField("temperature") else None,
                actions=list(request.allowed_actions) or None,
                cancel=cancel,
            )
            # Generation runs on its own thread so that everything generated while the previous
            # message was being sent goes out in one message (a fast model is not slowed down to
            # one network message per token; a slow one still streams token by token).
            queue: SimpleQueue = SimpleQueue()
            self._pool.submit(_produce, stream, queue)
            try:
                done = False
                while not done:
                    item = queue.get()
                    deltas = []
                    while True:
                        if item is _DONE:
                            done = True
                            break
                        if isinstance(item, BaseException):
                            raise item
                        deltas.append(
                            pb.Delta(
                                channel=CHANNEL[item.channel], text=item.text, segment=item.segment
                            )
                        )
                        try:
                            item = queue.get_nowait()
                        except Empty:
                            break
                    if done:
                        # After a cancel or deadline gRPC has already ended the call (dropped).
                        assert stream.reply is not None
                        yield pb.TurnResponse(
                            deltas=deltas, summary=_summary_msg(stream.reply, private)
                        )
                    else:
                        yield pb.TurnResponse(deltas=deltas)
            finally:
                cancel.cancel()  # no-op when finished; stops the producer if we left early
        except Exception as exc:
            abort(context, exc)

    # -- save / load ------------------------------------------------------------------------------

    @_guard
    def SaveScene(self, request, context):
        return pb.SaveSceneResponse(data=dump_scene(self._scene(request.scene_id)))

    @_guard
    def LoadScene(self, request, context):
        if not request.data:
            raise ConfigError("data is required")
        scene = scene_from_bytes(request.data, model=self.model)
        with self._lock:
            room = self.settings.max_characters - len(self.characters)
            if len(scene.characters) > room:
                raise LimitExceeded(f"the server holds {self.settings.max_characters} characters")
            self._add_scene(scene)
            for c in scene.characters.values():
                self._register_character(c)
            return self._scene_msg(scene)


_DONE = object()


def _produce(stream, queue: SimpleQueue) -> None:
    """Run a turn to its end, passing each delta (then _DONE, or the exception) to `queue`."""
    try:
        for delta in stream:
            queue.put(delta)
    except BaseException as exc:
        queue.put(exc)
    else:
        queue.put(_DONE)


def _is_map(field) -> bool:
    return field.message_type.GetOptions().map_entry


def _event_msg(e: Event) -> pb.Event:
    return pb.Event(
        index=e.index,
        kind=EVENT_KIND.get(e.kind, pb.EVENT_KIND_UNSPECIFIED),
        speaker=e.speaker,
        speech=e.speech,
        actions=e.actions,
        perceivers=e.perceivers,
    )


def _summary_msg(r: Reply, private: bool) -> pb.TurnSummary:
    segments = [s for s in r.segments if private or s.channel in PUBLIC_CHANNELS]
    msg = pb.TurnSummary(
        character=r.character,
        speech=r.speech,
        actions=r.actions,
        plan=r.plan if private else "",
        thoughts=r.thoughts if private else [],
        segments=[pb.Segment(channel=CHANNEL[s.channel], text=s.text) for s in segments],
        finish_reason=r.finish_reason,
        prompt_tokens=r.prompt_tokens,
        completion_tokens=r.completion_tokens,
        total_ms=r.total_s * 1000.0,
        private_included=private,
        raw=r.raw if private else "",
    )
    if r.first_token_s is not None:
        msg.first_token_ms = r.first_token_s * 1000.0
    if r.first_speech_s is not None:
        msg.first_speech_ms = r.first_speech_s * 1000.0
    return msg
