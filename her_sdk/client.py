"""A small Python client for a her_sdk gRPC server (`her serve`), returning in-process types.

    from her_sdk.client import Client

    with Client("127.0.0.1:50051") as her:
        mara = her.create_character("Mara", profile="Gate captain.", goals="keep the gate shut")
        scene = her.create_scene([mara], players=["Traveler"])
        scene.say("Traveler", "Let me through, I have papers.")
        reply = scene.turn("Mara")            # a her_sdk.Reply, as Scene.turn returns in-process
        for delta in scene.stream("Mara"):    # her_sdk.Delta pieces as they are generated
            print(delta.channel, delta.text)

Every rpc of `protos/her/v1/her.proto` has a method here: characters (`create_character`,
`get_character`, `update_character`, `delete_character`), their minds (`remember`,
`set_relationship`, `allow_reveal`), scenes (`create_scene`, `load_scene`, and on a
`RemoteScene`: `info`, `add`, `add_player`, `say`, `narrate`, `stream`/`turn`, `save`, `delete`)
and the server (`server_info`, `wait_ready`). Turns return `her_sdk.Reply`, deltas
`her_sdk.Delta`, events `her_sdk.Event`. Private channels
(plan, thoughts) arrive only if you ask (`private=True`, the default of `turn`) and the server runs
with `--expose-thoughts`. A failed call raises `her_sdk.ServerError` (a HerError; also importable
from here) carrying the gRPC status `code` name. Messages are translated by
`her_sdk.server._convert`, the module the server uses. This is a client only: no model, no game
logic.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

from ._actions import Action
from ._errors import ConfigError, MissingDependencyError, ServerError
from ._scene import Event
from ._turn import Reply
from .format import Delta, TurnShape

try:
    import grpc

    from .server._convert import (
        delta_from_pb,
        event_from_pb,
        priority_to_pb,
        reply_from_pb,
        settings_to_pb,
        shape_to_pb,
    )
    from .server._pb import pb, pb_grpc
except ImportError:
    raise MissingDependencyError("grpcio and protobuf", "grpc") from None

__all__ = ["Client", "RemoteScene", "RemoteTurnStream", "ServerError"]


def _error(exc: grpc.RpcError) -> ServerError:
    code = exc.code() if hasattr(exc, "code") else None
    return ServerError(code.name if code else "UNKNOWN", exc.details() if code else str(exc))


class Client:
    """Connection to a her_sdk server.

    - `target`: "host:port".
    - `token`: bearer token if the server runs with `--token`.
    - `root_certificates`: PEM CA (bytes or a path) for a TLS server; `tls=True` uses the system
      roots.
    - `timeout`: default deadline in seconds for every call (None: no deadline).
    - `max_message_bytes`: largest message sent or received; match the server's
      `--max-message-bytes` when it is raised above gRPC's default of 4 MiB.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | str | os.PathLike[str] | None = None,
        timeout: float | None = 60.0,
        options: Sequence[tuple[str, object]] = (),
        max_message_bytes: int | None = None,
    ) -> None:
        if max_message_bytes is not None:
            options = [
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                *options,
            ]
        if root_certificates is not None and not isinstance(root_certificates, bytes):
            root_certificates = Path(root_certificates).read_bytes()
        if tls or root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(target, creds, options=list(options))
        else:
            self.channel = grpc.insecure_channel(target, options=list(options))
        self.stub = pb_grpc.HerServiceStub(self.channel)
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request, timeout: float | None = None):
        try:
            return getattr(self.stub, method)(
                request, timeout=timeout or self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise _error(exc) from None

    # -- characters ---------------------------------------------------------------------------

    def create_character(
        self,
        name: str | None = None,
        *,
        card: dict | str | None = None,
        source: str = "",
        profile: str = "",
        background: str = "",
        scenario: str = "",
        goals: str = "",
        secrets: str = "",
        relationships: dict[str, str] | None = None,
        others: dict[str, str] | None = None,
        plan: bool | None = None,
        allowed_actions: Sequence[str] | None = None,
        typed_actions: Sequence[Action] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        max_memory: int | None = None,
        actions: Sequence[Action] | None = None,
        recall: int | None = None,
        summarize: bool | None = None,
        rate_importance: str | None = None,
        max_long_term: int | None = None,
        shape: TurnShape | None = None,
    ) -> str:
        """Create a character from persona fields or a Character Card (dict or JSON); its id.

        `allowed_actions`, if given, are the only action texts the character may write (as
        `Character(allowed_actions=...)`); `typed_actions` are typed actions whose calls come
        back in `Reply.calls` (`actions=`, their first name, is deprecated). The memory
        settings (`max_memory`, `recall`, `summarize`, `rate_importance`, `max_long_term`) are
        `Character`'s. The server validates every field.
        """
        if actions is not None:
            warnings.warn(
                "create_character(actions=) is deprecated; use typed_actions=",
                DeprecationWarning,
                2,
            )
            typed_actions = typed_actions if typed_actions is not None else actions
        settings = settings_to_pb(
            plan=plan,
            allowed_actions=list(allowed_actions or []),
            typed_actions=list(typed_actions or []),
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            max_memory=max_memory,
            recall=recall,
            summarize=summarize,
            rate_importance=rate_importance,
            max_long_term=max_long_term,
            shape=shape,
        )
        if card is not None:
            import json

            text = card if isinstance(card, str) else json.dumps(card)
            req = pb.CreateCharacterRequest(card_json=text, settings=settings)
        else:
            # Sent as given: the server validates (a bad name is INVALID_ARGUMENT).
            persona = pb.Persona(
                name=name or "",
                source=source,
                profile=profile,
                background=background,
                scenario=scenario,
                goals=goals,
                secrets=secrets,
                relationships=relationships or {},
                others=others or {},
            )
            req = pb.CreateCharacterRequest(persona=persona, settings=settings)
        return self._call("CreateCharacter", req).id

    def get_character(self, character_id: str) -> pb.Character:
        return self._call("GetCharacter", pb.GetCharacterRequest(character_id=character_id))

    def delete_character(self, character_id: str) -> None:
        self._call("DeleteCharacter", pb.DeleteCharacterRequest(character_id=character_id))

    def update_character(
        self,
        character_id: str,
        *,
        source: str | None = None,
        profile: str | None = None,
        background: str | None = None,
        scenario: str | None = None,
        goals: str | None = None,
        secrets: str | None = None,
    ) -> pb.Character:
        """Change persona fields mid-game (those given; the others stay)."""
        req = pb.UpdateCharacterRequest(
            character_id=character_id,
            source=source,
            profile=profile,
            background=background,
            scenario=scenario,
            goals=goals,
            secrets=secrets,
        )
        return self._call("UpdateCharacter", req)

    # -- the character's mind -----------------------------------------------------------------

    def remember(
        self, character_id: str, text: str, *, importance: float | None = None
    ) -> float | None:
        """Plant a fact in the character's long-term memory; the importance it was stored
        with (None while it waits for a model rating)."""
        req = pb.RememberRequest(character_id=character_id, text=text, importance=importance)
        response = self._call("Remember", req)
        return response.importance if response.HasField("importance") else None

    def set_relationship(self, character_id: str, who: str, note: str) -> pb.Character:
        """How the character regards `who` from now on (an empty note removes it)."""
        req = pb.SetRelationshipRequest(character_id=character_id, who=who, note=note)
        return self._call("SetRelationship", req)

    def allow_reveal(self, character_id: str, secret: str | None = None) -> None:
        """Let the character say its secrets (or this part of them) in public."""
        req = pb.AllowRevealRequest(character_id=character_id, secret=secret or "")
        self._call("AllowReveal", req)

    # -- the server ---------------------------------------------------------------------------

    def server_info(self) -> pb.ServerInfo:
        """The server's model, adapter, context size, prompt style, plan default, readiness."""
        return self._call("GetServerInfo", pb.GetServerInfoRequest())

    def wait_ready(self, timeout: float = 120.0, *, interval: float = 0.25) -> pb.ServerInfo:
        """Wait until the server accepts connections and has loaded its model.

        Retries while the port is not open yet (UNAVAILABLE) and while the model loads;
        raises ServerError("DEADLINE_EXCEEDED") after `timeout` seconds.
        """
        end = time.monotonic() + timeout
        while True:
            try:
                info = self._call("GetServerInfo", pb.GetServerInfoRequest(), timeout=interval * 8)
                if info.ready:
                    return info
            except ServerError as exc:
                if exc.code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                    raise
            if time.monotonic() >= end:
                raise ServerError("DEADLINE_EXCEEDED", f"the server was not ready in {timeout}s")
            time.sleep(interval)

    # -- scenes -------------------------------------------------------------------------------

    def create_scene(
        self,
        characters: Sequence[str] = (),
        players: Sequence[str] | str = (),
        *,
        name: str = "",
        seed: int | None = None,
    ) -> RemoteScene:
        """A scene with these character ids and player names."""
        players = [players] if isinstance(players, str) else list(players)
        req = pb.CreateSceneRequest(
            name=name, character_ids=list(characters), players=players, seed=seed
        )
        return RemoteScene(self, self._call("CreateScene", req).id)

    def scene(self, scene_id: str) -> RemoteScene:
        return RemoteScene(self, scene_id)

    def load_scene(self, data: bytes | None = None, *, name: str | None = None) -> RemoteScene:
        """A new scene from a save (characters get new ids): `RemoteScene.save()` bytes (a
        server run with --expose-thoughts only), or the `name` of a save on the server."""
        if (data is None) == (name is None):
            raise ConfigError("give save bytes or a save name")
        if name is not None:
            request = pb.LoadSceneRequest(name=name)
        else:
            request = pb.LoadSceneRequest(data=data)
        return RemoteScene(self, self._call("LoadScene", request).id)


class RemoteScene:
    """A scene on the server, with the methods of `her_sdk.Scene` that a game calls."""

    def __init__(self, client: Client, scene_id: str) -> None:
        self.client = client
        self.id = scene_id

    def __repr__(self) -> str:
        return f"RemoteScene({self.id!r})"

    def info(self, *, events: bool = False, viewer: str | None = None) -> pb.Scene:
        req = pb.GetSceneRequest(scene_id=self.id, include_events=events, viewer=viewer or "")
        return self.client._call("GetScene", req)

    @property
    def events(self) -> list[Event]:
        return [event_from_pb(e) for e in self.info(events=True).events]

    def transcript(self, viewer: str | None = None) -> list[Event]:
        return [event_from_pb(e) for e in self.info(events=True, viewer=viewer).events]

    def add(self, character_id: str) -> None:
        self.client._call(
            "AddParticipant", pb.AddParticipantRequest(scene_id=self.id, character_id=character_id)
        )

    def add_player(self, name: str) -> None:
        self.client._call("AddParticipant", pb.AddParticipantRequest(scene_id=self.id, player=name))

    def say(
        self,
        speaker: str,
        text: str = "",
        action: str | Sequence[str] | None = None,
        *,
        to: Sequence[str] | None = None,
    ) -> Event:
        actions = [action] if isinstance(action, str) else list(action or [])
        req = pb.SayRequest(
            scene_id=self.id, speaker=speaker, text=text, actions=actions, to=list(to or [])
        )
        return event_from_pb(self.client._call("Say", req))

    def narrate(self, text: str, *, to: Sequence[str] | None = None) -> Event:
        req = pb.NarrateRequest(scene_id=self.id, text=text, to=list(to or []))
        return event_from_pb(self.client._call("Narrate", req))

    def stream(
        self,
        who: str | None = None,
        *,
        private: bool = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        allowed_actions: Sequence[str] | None = None,
        timeout: float | None = None,
        priority: str = "normal",
        shape: TurnShape | None = None,
    ) -> RemoteTurnStream:
        """Start the turn of `who` (default: the scene's next speaker); iterate for Deltas.

        `allowed_actions` replaces the character's closed set of actions for this turn;
        `priority` is "player" (the NPC the player is waiting on), "normal" or "background";
        `shape` is this turn's `TurnShape` (default: the character's).
        """
        req = pb.TurnRequest(
            scene_id=self.id,
            character=who or "",
            include_private=private,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            allowed_actions=list(allowed_actions or []),
            priority=priority_to_pb(priority),
            shape=shape_to_pb(shape) if shape is not None else None,
        )
        call = self.client.stub.Turn(
            req, timeout=timeout or self.client.timeout, metadata=self.client._metadata
        )
        return RemoteTurnStream(call)

    def turn(self, who: str | None = None, **options) -> Reply:
        """Generate the turn of `who` and return its Reply (private parts if the server allows)."""
        options.setdefault("private", True)
        return self.stream(who, **options).wait()

    @overload
    def save(self) -> bytes: ...

    @overload
    def save(self, name: str) -> str: ...

    def save(self, name: str | None = None) -> bytes | str:
        """Save the scene: on the server under `name` (its --save-dir; returns the name), or,
        without a name, as bytes (only a server run with --expose-thoughts sends them)."""
        request = pb.SaveSceneRequest(scene_id=self.id, name=name or "")
        response = self.client._call("SaveScene", request)
        return response.name if name else response.data

    def delete(self, *, keep_characters: bool = False) -> None:
        req = pb.DeleteSceneRequest(scene_id=self.id, keep_characters=keep_characters)
        self.client._call("DeleteScene", req)


class RemoteTurnStream:
    """Deltas of a remote turn as they arrive; `reply` is set after the last one."""

    def __init__(self, call) -> None:
        self._call = call
        self.reply: Reply | None = None
        self._iter = self._deltas()

    def _deltas(self) -> Iterator[Delta]:
        try:
            for msg in self._call:
                for d in msg.deltas:
                    yield delta_from_pb(d)
                if msg.HasField("summary"):
                    self.reply = reply_from_pb(msg.summary)
        except grpc.RpcError as exc:
            raise _error(exc) from None

    def __iter__(self) -> Iterator[Delta]:
        return self._iter

    def __next__(self) -> Delta:
        return next(self._iter)

    def cancel(self) -> None:
        """Stop the turn; the server stops generating before its next token."""
        self._call.cancel()

    def wait(self) -> Reply:
        for _ in self._iter:
            pass
        if self.reply is None:
            raise ServerError("INTERNAL", "the turn stream ended without a summary")
        return self.reply
