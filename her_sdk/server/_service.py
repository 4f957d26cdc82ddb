"""HerService: translates her.v1 messages to calls on her_sdk Characters and Scenes, and back.

It holds the id -> object registry and enforces the server's limits; every rule of the story
(who perceives what, parsing, knowledge isolation, private channels) is the SDK's. Messages are
converted by `_convert` only; errors raised here or in the SDK become status codes in `_status`
only.
"""

from __future__ import annotations

import functools
import os
import re
import stat
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Empty, SimpleQueue

import msgspec

from .._backends._base import Backend, CancelToken
from .._character import Character
from .._errors import (
    Cancelled,
    ConfigError,
    LimitExceededError,
    NotFoundError,
    PermissionDeniedError,
)
from .._persona import Persona
from .._scene import Event, Scene, SceneState
from .._version import __version__
from ._backend import describe
from ._budget import TextBudget, text_chars
from ._convert import (
    delta_to_pb,
    event_to_pb,
    persona_from_pb,
    persona_to_pb,
    persona_update_from_pb,
    priority_from_pb,
    reply_to_pb,
    server_info_to_pb,
    settings_from_pb,
    shape_from_pb,
)
from ._pb import pb, pb_grpc
from ._settings import ServerSettings
from ._status import Loading, abort

__all__ = ["HerServicer"]

_UNLIMITED_TEXT = frozenset({"card_json"})  # bounded by the message size only


def _guard(fn: Callable) -> Callable:
    """Unary handler wrapper: check limits, map any exception to its status."""

    @functools.wraps(fn)
    def handler(self: HerServicer, request, context):
        try:
            self._check_ready()
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
    """The handlers of both transports (gRPC, and Connect over HTTP in `_connect`).

    `model=None` starts it not ready: every call but GetServerInfo fails with UNAVAILABLE until
    `set_model()` (a sidecar opens its ports first and loads the model after).
    """

    def __init__(self, model: Backend | None, settings: ServerSettings) -> None:
        self.model: Backend | None = None
        self._model_info: dict | None = None
        self.settings = settings
        self.characters: dict[str, Character] = {}
        self.scenes: dict[str, Scene] = {}
        self._scene_ids: dict[int, str] = {}  # id(Scene) -> scene id
        self._char_ids: dict[int, str] = {}  # id(Character) -> character id
        # Guards the registry and changes of scene membership; turns do not take it.
        self._lock = threading.RLock()
        self._pool = ThreadPoolExecutor(settings.max_workers, thread_name_prefix="her-turn")
        self.budget = TextBudget(settings.max_scene_events, settings.max_total_chars)
        if model is not None:
            self.set_model(model)

    def set_model(self, model: Backend) -> None:
        """The model is loaded: from now on every call is served."""
        self._model_info = describe(model)
        self.model = model

    @property
    def ready(self) -> bool:
        return self.model is not None

    def _check_ready(self) -> Backend:
        model = self.model
        if model is None:
            raise Loading("the server is still loading its model: retry shortly")
        return model

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
                    raise LimitExceededError(f"{field.name} is longer than {limit} characters")
            elif field.is_repeated:
                if len(value) > items:
                    raise LimitExceededError(f"{field.name} has more than {items} entries")
                entries = value.items() if field.message_type and _is_map(field) else None
                if entries is not None:
                    for k, v in entries:
                        if len(k) > limit or len(v) > limit:
                            raise LimitExceededError(f"an entry of {field.name} is too long")
                elif field.type == field.TYPE_STRING:
                    if any(len(v) > limit for v in value):
                        raise LimitExceededError(f"an entry of {field.name} is too long")
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
            raise NotFoundError(f"no scene with id {scene_id!r}") from None

    def _character(self, character_id: str) -> Character:
        _require(character_id, "character_id")
        try:
            return self.characters[character_id]
        except KeyError:
            raise NotFoundError(f"no character with id {character_id!r}") from None

    def _register_character(self, c: Character) -> str:
        with self._lock:
            if len(self.characters) >= self.settings.max_characters:
                raise LimitExceededError(
                    f"the server holds {self.settings.max_characters} characters"
                )
            cid = f"c-{uuid.uuid4().hex}"
            self.characters[cid] = c
            self._char_ids[id(c)] = cid
            return cid

    def _scene_of(self, c: Character) -> tuple[str, Scene] | None:
        """(scene id, scene) of the scene `c` is in, if any (at most max_scenes to look at)."""
        for sid, scene in list(self.scenes.items()):
            if c in scene:
                return sid, scene
        return None

    def _forget_character(self, cid: str) -> None:
        c = self.characters.pop(cid, None)
        self.budget.drop_character(cid)
        if c is not None:
            self._char_ids.pop(id(c), None)
            if (where := self._scene_of(c)) is not None:
                where[1].remove(c.name)

    def _charge(
        self, sid: str, events: int, chars: int, holders: dict[str, int] | None = None
    ) -> None:
        self.budget.charge(sid, events, chars, holders)

    def _listeners(self, scene: Scene, to: Sequence[str], chars: int) -> dict[str, int]:
        """Who keeps a copy of `chars` said in `scene` (to `to` only, if given): its characters
        the server knows, by id."""
        names = set(to) if to else None
        return {
            cid: chars
            for name, c in scene.characters.items()
            if (names is None or name in names) and (cid := self._char_ids.get(id(c)))
        }

    def _release(self, sid: str) -> None:
        self.budget.drop_scene(sid)

    def _character_msg(self, c: Character) -> pb.Character:
        where = self._scene_of(c)
        persona = c.persona
        if persona.secrets and not self.settings.expose_thoughts:
            persona = msgspec.structs.replace(persona, secrets="")  # private: see her.proto
        return pb.Character(
            id=self._char_ids.get(id(c), ""),
            persona=persona_to_pb(persona),
            scene_id=where[0] if where is not None else "",
            turns_taken=c.turns_taken,
            memory_items=len(c.memory),
        )

    def _scene_msg(self, scene: Scene, events: list[Event] | None = None) -> pb.Scene:
        msg = pb.Scene(
            id=self._scene_ids.get(id(scene), ""),
            name=scene.name,
            characters=[
                pb.Participant(character_id=self._char_ids.get(id(c), ""), name=n)
                for n, c in scene.characters.items()
            ],
            players=scene.players,
            event_count=scene.event_count,
            events=[event_to_pb(e) for e in events or ()],
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
            persona = persona_from_pb(request.persona)
        else:
            _require(request.card_json, "card_json")
            persona = Persona.from_card(request.card_json)
            for f in ("name", "profile", "scenario"):
                if len(getattr(persona, f)) > self.settings.max_text_chars:
                    raise LimitExceededError(f"the card's {f} is longer than the text limit")
        kwargs, overrides = settings_from_pb(request.settings)
        c = Character(persona=persona, model=self.model, **kwargs)
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
            raise LimitExceededError(f"the server holds {self.settings.max_scenes} scenes")
        sid = f"s-{uuid.uuid4().hex}"
        self.scenes[sid] = scene
        self._scene_ids[id(scene)] = sid
        return sid

    @_guard
    def CreateScene(self, request, context):
        with self._lock:
            members = [self._character(cid) for cid in request.character_ids]
            if len(self.scenes) >= self.settings.max_scenes:
                raise LimitExceededError(f"the server holds {self.settings.max_scenes} scenes")
            scene = Scene(
                name=request.name,
                seed=request.seed if request.HasField("seed") else None,
                max_events=self.settings.max_scene_events,
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
            for name, c in scene.characters.items():
                cid = self._char_ids.get(id(c))
                if request.keep_characters or cid is None:
                    scene.remove(name)
                else:
                    self._forget_character(cid)
            del self.scenes[request.scene_id]
            self._scene_ids.pop(id(scene), None)
            self._release(request.scene_id)
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
        chars = len(request.text) + sum(len(a) for a in request.actions)
        if chars > self.settings.max_text_chars:
            raise LimitExceededError(
                f"text and actions together are longer than {self.settings.max_text_chars} "
                "characters"
            )
        to = list(request.to)
        self._charge(request.scene_id, 1, chars, self._listeners(scene, to, chars))
        event = scene.say(
            request.speaker, request.text, list(request.actions), to=list(request.to) or None
        )
        return event_to_pb(event)

    @_guard
    def Narrate(self, request, context):
        scene = self._scene(request.scene_id)
        chars = len(request.text)
        self._charge(request.scene_id, 1, chars, self._listeners(scene, list(request.to), chars))
        event = scene.narrate(request.text, to=list(request.to) or None)
        return event_to_pb(event)

    # -- turns ------------------------------------------------------------------------------------

    def Turn(self, request, context) -> Iterator[pb.TurnResponse]:
        try:
            self._check_ready()
            self._check_limits(request)
            scene = self._scene(request.scene_id)
            name = request.character or scene.next_speaker()
            if name not in scene.characters:
                raise NotFoundError(f"no character named {name!r} in scene {request.scene_id!r}")
            private = request.include_private and self.settings.expose_thoughts
            self._charge(request.scene_id, 1, 0)  # its text is counted when it ends
            cancel = CancelToken()
            # Client cancel or deadline: stop generation before the next token.
            context.add_callback(cancel.cancel)
            stream = scene.stream(
                name,
                private=private,
                seed=request.seed if request.HasField("seed") else None,
                max_tokens=request.max_tokens if request.HasField("max_tokens") else None,
                temperature=request.temperature if request.HasField("temperature") else None,
                allowed_actions=list(request.allowed_actions) or None,
                cancel=cancel,
                priority=priority_from_pb(request.priority),
                shape=shape_from_pb(request.shape) if request.HasField("shape") else None,
            )
            # Generation runs on its own thread so that everything generated while the previous
            # message was being sent goes out in one message (a fast model is not slowed down to
            # one network message per token; a slow one still streams token by token).
            queue: SimpleQueue = SimpleQueue()
            self._pool.submit(_produce, stream, queue, cancel)
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
                        deltas.append(delta_to_pb(item))
                        try:
                            item = queue.get_nowait()
                        except Empty:
                            break
                    if done:
                        # After a cancel or deadline gRPC has already ended the call (dropped).
                        assert stream.reply is not None
                        n = len(stream.reply.raw)  # after the fact: never cut for it
                        self.budget.record(request.scene_id, n, self._listeners(scene, [], n))
                        yield pb.TurnResponse(
                            deltas=deltas, summary=reply_to_pb(stream.reply, private=private)
                        )
                    else:
                        yield pb.TurnResponse(deltas=deltas)
            finally:
                cancel.cancel()  # no-op when finished; stops the producer if we left early
        except Exception as exc:
            abort(context, exc)

    # -- the character's mind --------------------------------------------------------------------

    @_guard
    def Remember(self, request, context):
        c = self._character(request.character_id)
        _require(request.text, "text")
        given = request.importance if request.HasField("importance") else None
        item = c.remember(request.text, importance=given)
        response = pb.RememberResponse()
        if given is not None or c.rate_importance != "model":
            response.importance = item.importance
        return response

    @_guard
    def SetRelationship(self, request, context):
        c = self._character(request.character_id)
        _require(request.who, "who")
        persona_from_pb(pb.Persona(name=request.who))  # the name rules of any participant
        c.set_relationship(request.who, request.note)
        return self._character_msg(c)

    @_guard
    def AllowReveal(self, request, context):
        c = self._character(request.character_id)
        try:
            if not c.persona.secrets:
                raise ConfigError(f"{c.name!r} has no secrets")
            c.allow_reveal(request.secret or None)
        except ConfigError:
            # Whether a text is a part of the secrets (or whether there are any) is itself
            # private: without --expose-thoughts the answer must not tell (see her.proto).
            if self.settings.expose_thoughts:
                raise
        return pb.AllowRevealResponse()

    @_guard
    def UpdateCharacter(self, request, context):
        c = self._character(request.character_id)
        c.persona = persona_update_from_pb(c.persona, request)
        return self._character_msg(c)

    def GetServerInfo(self, request, context):
        # Answered while the model loads too: it is how a client waits for `ready`.
        try:
            return server_info_to_pb(
                __version__,
                self._model_info if self.ready else None,
                expose_thoughts=self.settings.expose_thoughts,
                named_saves=self.settings.save_dir is not None,
            )
        except Exception as exc:
            abort(context, exc)

    # -- save / load ------------------------------------------------------------------------------

    def _save_path(self, name: str) -> Path:
        if not _SAVE_NAME.fullmatch(name):
            raise ConfigError(
                f"save name {name[:80]!r} must be 1-64 letters, digits, '_', '-' or '.', "
                "not starting with '.'"
            )
        if self.settings.save_dir is None:
            raise ConfigError("this server keeps no saves (it was started without --save-dir)")
        return self.settings.save_dir / f"{name}{_SAVE_SUFFIX}"

    def _read_named(self, name: str) -> bytes:
        """The bytes of the save `name`: a regular file inside --save-dir itself (a symlink, even
        to a file there, is not a save), no larger than max_save_bytes, checked before reading."""
        path = self._save_path(name)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:  # missing, a symlink (ELOOP), a folder, unreadable
            raise NotFoundError(f"no save named {name!r}") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise NotFoundError(f"no save named {name!r}")
            if st.st_size > self.settings.max_save_bytes:
                raise LimitExceededError(
                    f"save {name!r} is {st.st_size} bytes; this server reads saves of at most "
                    f"{self.settings.max_save_bytes} (--max-save-bytes)"
                )
            return f.read(self.settings.max_save_bytes + 1)

    @_guard
    def SaveScene(self, request, context):
        scene = self._scene(request.scene_id)
        if request.name:
            path = self._save_path(request.name)
            scene.save(path)
            return pb.SaveSceneResponse(name=request.name)
        if not self.settings.expose_thoughts:
            raise PermissionDeniedError(
                "a save holds private thoughts, so this server (without --expose-thoughts) "
                "does not send one: give a name to save it on the server (--save-dir)"
            )
        data = scene.dumps()
        if len(data) + 64 > self.settings.max_message_bytes:
            raise LimitExceededError(
                f"the save is {len(data)} bytes, more than one message may carry "
                "(--max-message-bytes): save it by name on the server instead"
            )
        return pb.SaveSceneResponse(data=data)

    @_guard
    def LoadScene(self, request, context):
        which = request.WhichOneof("source")
        if which == "name":
            data, source = self._read_named(request.name), f"save {request.name!r}"
        elif which == "data" and request.data:
            if not self.settings.expose_thoughts:
                raise PermissionDeniedError(
                    "loading save bytes writes characters' minds, an administrative operation "
                    "this server (without --expose-thoughts) does not allow: load a save by name"
                )
            data, source = request.data, "save data"
        else:
            raise ConfigError("data or name is required")
        state: SceneState = Scene.decode_state(data, source=source)
        self._check_save(state)
        log_chars = text_chars([state.events, state.players, state.name])
        kept = {cs.persona.name: text_chars(cs) for cs in state.characters}
        state.max_events = min(state.max_events, self.settings.max_scene_events)
        scene = Scene.restore(state, source=source, model=self._check_ready())
        with self._lock:
            room = self.settings.max_characters - len(self.characters)
            if len(scene.characters) > room:
                raise LimitExceededError(
                    f"the server holds {self.settings.max_characters} characters"
                )
            sid = self._add_scene(scene)
            cids = [self._register_character(c) for c in scene.characters.values()]
            try:
                self._charge(
                    sid,
                    len(state.events),
                    log_chars,
                    {
                        cid: kept.get(c.name, 0)
                        for cid, c in zip(cids, scene.characters.values(), strict=True)
                    },
                )
            except LimitExceededError:
                for cid in cids:
                    self._forget_character(cid)
                del self.scenes[sid]
                self._scene_ids.pop(id(scene), None)
                self._release(sid)
                raise
            return self._scene_msg(scene)

    def _check_save(self, state: SceneState) -> None:
        """Hold a save to the limits that requests are held to (its text is counted against the
        budget by `text_chars`, per scene log and per character).

        A save is a request too: without this, one message could hand the server texts and
        memories far beyond what Say and CreateCharacter accept, and each turn would pay for them.
        """
        s = self.settings
        if len(state.events) > s.max_scene_events:
            raise LimitExceededError(f"the save holds more than {s.max_scene_events} events")
        if len(state.players) > s.max_list_items:
            raise LimitExceededError(f"the save holds more than {s.max_list_items} players")
        longest_list = max(s.max_scene_events, s.max_list_items)
        stack: list[object] = [msgspec.to_builtins(state)]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                if len(item) > s.max_text_chars:
                    raise LimitExceededError(
                        f"the save holds a text longer than {s.max_text_chars} characters"
                    )
            elif isinstance(item, list):
                if len(item) > longest_list:
                    raise LimitExceededError(f"the save holds a list of {len(item)} entries")
                stack.extend(item)
            elif isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())


_SAVE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
_SAVE_SUFFIX = ".her.json"
_DONE = object()


def _produce(stream, queue: SimpleQueue, cancel: CancelToken) -> None:
    """Run a turn to its end, passing each delta (then _DONE, or the exception) to `queue`."""
    if cancel.cancelled:  # its client left while it waited for a thread: drop it unstarted
        queue.put(Cancelled("the client left before the turn began"))
        return
    try:
        for delta in stream:
            queue.put(delta)
    except BaseException as exc:
        queue.put(exc)
    else:
        queue.put(_DONE)


def _is_map(field) -> bool:
    return field.message_type.GetOptions().map_entry
