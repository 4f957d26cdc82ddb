from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TurnShapePreset(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TURN_SHAPE_PRESET_UNSPECIFIED: _ClassVar[TurnShapePreset]
    TURN_SHAPE_PRESET_GAME: _ClassVar[TurnShapePreset]
    TURN_SHAPE_PRESET_FREE: _ClassVar[TurnShapePreset]

class ImportanceRating(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMPORTANCE_RATING_UNSPECIFIED: _ClassVar[ImportanceRating]
    IMPORTANCE_RATING_HEURISTIC: _ClassVar[ImportanceRating]
    IMPORTANCE_RATING_MODEL: _ClassVar[ImportanceRating]

class Target(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TARGET_UNSPECIFIED: _ClassVar[Target]
    TARGET_CHARACTER: _ClassVar[Target]
    TARGET_PLAYER: _ClassVar[Target]
    TARGET_ANYONE: _ClassVar[Target]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_SPEECH: _ClassVar[EventKind]
    EVENT_KIND_NARRATION: _ClassVar[EventKind]
    EVENT_KIND_TURN: _ClassVar[EventKind]

class TurnPriority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TURN_PRIORITY_UNSPECIFIED: _ClassVar[TurnPriority]
    TURN_PRIORITY_BACKGROUND: _ClassVar[TurnPriority]
    TURN_PRIORITY_NORMAL: _ClassVar[TurnPriority]
    TURN_PRIORITY_PLAYER: _ClassVar[TurnPriority]

class Channel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_UNSPECIFIED: _ClassVar[Channel]
    CHANNEL_PLAN: _ClassVar[Channel]
    CHANNEL_THOUGHT: _ClassVar[Channel]
    CHANNEL_ACTION: _ClassVar[Channel]
    CHANNEL_SPEECH: _ClassVar[Channel]
TURN_SHAPE_PRESET_UNSPECIFIED: TurnShapePreset
TURN_SHAPE_PRESET_GAME: TurnShapePreset
TURN_SHAPE_PRESET_FREE: TurnShapePreset
IMPORTANCE_RATING_UNSPECIFIED: ImportanceRating
IMPORTANCE_RATING_HEURISTIC: ImportanceRating
IMPORTANCE_RATING_MODEL: ImportanceRating
TARGET_UNSPECIFIED: Target
TARGET_CHARACTER: Target
TARGET_PLAYER: Target
TARGET_ANYONE: Target
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_SPEECH: EventKind
EVENT_KIND_NARRATION: EventKind
EVENT_KIND_TURN: EventKind
TURN_PRIORITY_UNSPECIFIED: TurnPriority
TURN_PRIORITY_BACKGROUND: TurnPriority
TURN_PRIORITY_NORMAL: TurnPriority
TURN_PRIORITY_PLAYER: TurnPriority
CHANNEL_UNSPECIFIED: Channel
CHANNEL_PLAN: Channel
CHANNEL_THOUGHT: Channel
CHANNEL_ACTION: Channel
CHANNEL_SPEECH: Channel

class Persona(_message.Message):
    __slots__ = ("name", "source", "profile", "background", "scenario", "goals", "secrets", "relationships", "others")
    class RelationshipsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class OthersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    GOALS_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    RELATIONSHIPS_FIELD_NUMBER: _ClassVar[int]
    OTHERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    profile: str
    background: str
    scenario: str
    goals: str
    secrets: str
    relationships: _containers.ScalarMap[str, str]
    others: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., profile: _Optional[str] = ..., background: _Optional[str] = ..., scenario: _Optional[str] = ..., goals: _Optional[str] = ..., secrets: _Optional[str] = ..., relationships: _Optional[_Mapping[str, str]] = ..., others: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CharacterSettings(_message.Message):
    __slots__ = ("plan", "allowed_actions", "max_tokens", "temperature", "seed", "max_memory", "actions", "recall", "summarize", "rate_importance", "max_long_term", "shape")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    SUMMARIZE_FIELD_NUMBER: _ClassVar[int]
    RATE_IMPORTANCE_FIELD_NUMBER: _ClassVar[int]
    MAX_LONG_TERM_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    plan: bool
    allowed_actions: _containers.RepeatedScalarFieldContainer[str]
    max_tokens: int
    temperature: float
    seed: int
    max_memory: int
    actions: _containers.RepeatedCompositeFieldContainer[ActionSpec]
    recall: int
    summarize: bool
    rate_importance: ImportanceRating
    max_long_term: int
    shape: TurnShape
    def __init__(self, plan: _Optional[bool] = ..., allowed_actions: _Optional[_Iterable[str]] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., seed: _Optional[int] = ..., max_memory: _Optional[int] = ..., actions: _Optional[_Iterable[_Union[ActionSpec, _Mapping]]] = ..., recall: _Optional[int] = ..., summarize: _Optional[bool] = ..., rate_importance: _Optional[_Union[ImportanceRating, str]] = ..., max_long_term: _Optional[int] = ..., shape: _Optional[_Union[TurnShape, _Mapping]] = ...) -> None: ...

class TurnShape(_message.Message):
    __slots__ = ("preset", "max_segments", "max_actions", "max_thoughts", "max_speeches", "max_speech_chars", "max_action_chars", "max_thought_chars", "max_plan_chars", "max_sentences", "quotes", "line_breaks")
    PRESET_FIELD_NUMBER: _ClassVar[int]
    MAX_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_THOUGHTS_FIELD_NUMBER: _ClassVar[int]
    MAX_SPEECHES_FIELD_NUMBER: _ClassVar[int]
    MAX_SPEECH_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_ACTION_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_THOUGHT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_PLAN_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_SENTENCES_FIELD_NUMBER: _ClassVar[int]
    QUOTES_FIELD_NUMBER: _ClassVar[int]
    LINE_BREAKS_FIELD_NUMBER: _ClassVar[int]
    preset: TurnShapePreset
    max_segments: int
    max_actions: int
    max_thoughts: int
    max_speeches: int
    max_speech_chars: int
    max_action_chars: int
    max_thought_chars: int
    max_plan_chars: int
    max_sentences: int
    quotes: bool
    line_breaks: bool
    def __init__(self, preset: _Optional[_Union[TurnShapePreset, str]] = ..., max_segments: _Optional[int] = ..., max_actions: _Optional[int] = ..., max_thoughts: _Optional[int] = ..., max_speeches: _Optional[int] = ..., max_speech_chars: _Optional[int] = ..., max_action_chars: _Optional[int] = ..., max_thought_chars: _Optional[int] = ..., max_plan_chars: _Optional[int] = ..., max_sentences: _Optional[int] = ..., quotes: _Optional[bool] = ..., line_breaks: _Optional[bool] = ...) -> None: ...

class Values(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class ActionParam(_message.Message):
    __slots__ = ("name", "values", "target", "text_max_chars")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TEXT_MAX_CHARS_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: Values
    target: Target
    text_max_chars: int
    def __init__(self, name: _Optional[str] = ..., values: _Optional[_Union[Values, _Mapping]] = ..., target: _Optional[_Union[Target, str]] = ..., text_max_chars: _Optional[int] = ...) -> None: ...

class ActionSpec(_message.Message):
    __slots__ = ("name", "description", "params", "regard")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    REGARD_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    params: _containers.RepeatedCompositeFieldContainer[ActionParam]
    regard: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., params: _Optional[_Iterable[_Union[ActionParam, _Mapping]]] = ..., regard: _Optional[bool] = ...) -> None: ...

class CreateCharacterRequest(_message.Message):
    __slots__ = ("persona", "card_json", "settings")
    PERSONA_FIELD_NUMBER: _ClassVar[int]
    CARD_JSON_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    persona: Persona
    card_json: str
    settings: CharacterSettings
    def __init__(self, persona: _Optional[_Union[Persona, _Mapping]] = ..., card_json: _Optional[str] = ..., settings: _Optional[_Union[CharacterSettings, _Mapping]] = ...) -> None: ...

class Character(_message.Message):
    __slots__ = ("id", "persona", "scene_id", "turns_taken", "memory_items")
    ID_FIELD_NUMBER: _ClassVar[int]
    PERSONA_FIELD_NUMBER: _ClassVar[int]
    SCENE_ID_FIELD_NUMBER: _ClassVar[int]
    TURNS_TAKEN_FIELD_NUMBER: _ClassVar[int]
    MEMORY_ITEMS_FIELD_NUMBER: _ClassVar[int]
    id: str
    persona: Persona
    scene_id: str
    turns_taken: int
    memory_items: int
    def __init__(self, id: _Optional[str] = ..., persona: _Optional[_Union[Persona, _Mapping]] = ..., scene_id: _Optional[str] = ..., turns_taken: _Optional[int] = ..., memory_items: _Optional[int] = ...) -> None: ...

class GetCharacterRequest(_message.Message):
    __slots__ = ("character_id",)
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    character_id: str
    def __init__(self, character_id: _Optional[str] = ...) -> None: ...

class DeleteCharacterRequest(_message.Message):
    __slots__ = ("character_id",)
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    character_id: str
    def __init__(self, character_id: _Optional[str] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateSceneRequest(_message.Message):
    __slots__ = ("name", "character_ids", "players", "seed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CHARACTER_IDS_FIELD_NUMBER: _ClassVar[int]
    PLAYERS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    name: str
    character_ids: _containers.RepeatedScalarFieldContainer[str]
    players: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    def __init__(self, name: _Optional[str] = ..., character_ids: _Optional[_Iterable[str]] = ..., players: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ...) -> None: ...

class Participant(_message.Message):
    __slots__ = ("character_id", "name")
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    character_id: str
    name: str
    def __init__(self, character_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("index", "kind", "speaker", "speech", "actions", "perceivers")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SPEAKER_FIELD_NUMBER: _ClassVar[int]
    SPEECH_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    PERCEIVERS_FIELD_NUMBER: _ClassVar[int]
    index: int
    kind: EventKind
    speaker: str
    speech: str
    actions: _containers.RepeatedScalarFieldContainer[str]
    perceivers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, index: _Optional[int] = ..., kind: _Optional[_Union[EventKind, str]] = ..., speaker: _Optional[str] = ..., speech: _Optional[str] = ..., actions: _Optional[_Iterable[str]] = ..., perceivers: _Optional[_Iterable[str]] = ...) -> None: ...

class Scene(_message.Message):
    __slots__ = ("id", "name", "characters", "players", "event_count", "events", "seed")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    PLAYERS_FIELD_NUMBER: _ClassVar[int]
    EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    characters: _containers.RepeatedCompositeFieldContainer[Participant]
    players: _containers.RepeatedScalarFieldContainer[str]
    event_count: int
    events: _containers.RepeatedCompositeFieldContainer[Event]
    seed: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., characters: _Optional[_Iterable[_Union[Participant, _Mapping]]] = ..., players: _Optional[_Iterable[str]] = ..., event_count: _Optional[int] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., seed: _Optional[int] = ...) -> None: ...

class GetSceneRequest(_message.Message):
    __slots__ = ("scene_id", "include_events", "viewer")
    SCENE_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EVENTS_FIELD_NUMBER: _ClassVar[int]
    VIEWER_FIELD_NUMBER: _ClassVar[int]
    scene_id: str
    include_events: bool
    viewer: str
    def __init__(self, scene_id: _Optional[str] = ..., include_events: _Optional[bool] = ..., viewer: _Optional[str] = ...) -> None: ...

class DeleteSceneRequest(_message.Message):
    __slots__ = ("scene_id", "keep_characters")
    SCENE_ID_FIELD_NUMBER: _ClassVar[int]
    KEEP_CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    scene_id: str
    keep_characters: bool
    def __init__(self, scene_id: _Optional[str] = ..., keep_characters: _Optional[bool] = ...) -> None: ...

class AddParticipantRequest(_message.Message):
    __slots__ = ("scene_id", "character_id", "player")
    SCENE_ID_FIELD_NUMBER: _ClassVar[int]
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    PLAYER_FIELD_NUMBER: _ClassVar[int]
    scene_id: str
    character_id: str
    player: str
    def __init__(self, scene_id: _Optional[str] = ..., character_id: _Optional[str] = ..., player: _Optional[str] = ...) -> None: ...

class SayRequest(_message.Message):
    __slots__ = ("scene_id", "speaker", "text", "actions", "to")
    SCENE_ID_FIELD_NUMBER: _ClassVar[int]
    SPEAKER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    scene_id: str
    speaker: str
    text: str
    actions: _containers.RepeatedScalarFieldContainer[str]
    to: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, scene_id: _Optional[str] = ..., speaker: _Optional[str] = ..., text: _Optional[str] = ..., actions: _Optional[_Iterable[str]] = ..., to: _Optional[_Iterable[str]] = ...) -> None: ...

class NarrateRequest(_message.Message):
    __slots__ = ("scene_id", "text", "to")
    SCENE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    scene_id: str
    text: str
    to: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, scene_id: _Optional[str] = ..., text: _Optional[str] = ..., to: _Optional[_Iterable[str]] = ...) -> None: ...

class TurnRequest(_message.Message):
    __slots__ = ("scene_id", "character", "include_private", "max_tokens", "temperature", "seed", "allowed_actions", "priority", "shape")
    SCENE_ID_FIELD_NUMBER: _ClassVar[int]
    CHARACTER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PRIVATE_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    scene_id: str
    character: str
    include_private: bool
    max_tokens: int
    temperature: float
    seed: int
    allowed_actions: _containers.RepeatedScalarFieldContainer[str]
    priority: TurnPriority
    shape: TurnShape
    def __init__(self, scene_id: _Optional[str] = ..., character: _Optional[str] = ..., include_private: _Optional[bool] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., seed: _Optional[int] = ..., allowed_actions: _Optional[_Iterable[str]] = ..., priority: _Optional[_Union[TurnPriority, str]] = ..., shape: _Optional[_Union[TurnShape, _Mapping]] = ...) -> None: ...

class Delta(_message.Message):
    __slots__ = ("channel", "text", "segment")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    channel: Channel
    text: str
    segment: int
    def __init__(self, channel: _Optional[_Union[Channel, str]] = ..., text: _Optional[str] = ..., segment: _Optional[int] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("channel", "text")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    channel: Channel
    text: str
    def __init__(self, channel: _Optional[_Union[Channel, str]] = ..., text: _Optional[str] = ...) -> None: ...

class TurnSummary(_message.Message):
    __slots__ = ("character", "speech", "actions", "plan", "thoughts", "segments", "finish_reason", "prompt_tokens", "completion_tokens", "first_token_ms", "first_speech_ms", "total_ms", "private_included", "raw", "calls", "invalid_calls", "blocked_reveals")
    CHARACTER_FIELD_NUMBER: _ClassVar[int]
    SPEECH_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    THOUGHTS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SPEECH_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_INCLUDED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    INVALID_CALLS_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_REVEALS_FIELD_NUMBER: _ClassVar[int]
    character: str
    speech: str
    actions: _containers.RepeatedScalarFieldContainer[str]
    plan: str
    thoughts: _containers.RepeatedScalarFieldContainer[str]
    segments: _containers.RepeatedCompositeFieldContainer[Segment]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    first_token_ms: float
    first_speech_ms: float
    total_ms: float
    private_included: bool
    raw: str
    calls: _containers.RepeatedCompositeFieldContainer[Call]
    invalid_calls: _containers.RepeatedCompositeFieldContainer[InvalidCall]
    blocked_reveals: _containers.RepeatedCompositeFieldContainer[BlockedReveal]
    def __init__(self, character: _Optional[str] = ..., speech: _Optional[str] = ..., actions: _Optional[_Iterable[str]] = ..., plan: _Optional[str] = ..., thoughts: _Optional[_Iterable[str]] = ..., segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ..., finish_reason: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., first_token_ms: _Optional[float] = ..., first_speech_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., private_included: _Optional[bool] = ..., raw: _Optional[str] = ..., calls: _Optional[_Iterable[_Union[Call, _Mapping]]] = ..., invalid_calls: _Optional[_Iterable[_Union[InvalidCall, _Mapping]]] = ..., blocked_reveals: _Optional[_Iterable[_Union[BlockedReveal, _Mapping]]] = ...) -> None: ...

class CallArg(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Call(_message.Message):
    __slots__ = ("name", "args")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    args: _containers.RepeatedCompositeFieldContainer[CallArg]
    def __init__(self, name: _Optional[str] = ..., args: _Optional[_Iterable[_Union[CallArg, _Mapping]]] = ...) -> None: ...

class InvalidCall(_message.Message):
    __slots__ = ("text", "error")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    text: str
    error: str
    def __init__(self, text: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class BlockedReveal(_message.Message):
    __slots__ = ("secret", "text", "channel")
    SECRET_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    secret: str
    text: str
    channel: Channel
    def __init__(self, secret: _Optional[str] = ..., text: _Optional[str] = ..., channel: _Optional[_Union[Channel, str]] = ...) -> None: ...

class TurnResponse(_message.Message):
    __slots__ = ("deltas", "summary")
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    deltas: _containers.RepeatedCompositeFieldContainer[Delta]
    summary: TurnSummary
    def __init__(self, deltas: _Optional[_Iterable[_Union[Delta, _Mapping]]] = ..., summary: _Optional[_Union[TurnSummary, _Mapping]] = ...) -> None: ...

class SaveSceneRequest(_message.Message):
    __slots__ = ("scene_id", "name")
    SCENE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    scene_id: str
    name: str
    def __init__(self, scene_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class SaveSceneResponse(_message.Message):
    __slots__ = ("data", "name")
    DATA_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    name: str
    def __init__(self, data: _Optional[bytes] = ..., name: _Optional[str] = ...) -> None: ...

class LoadSceneRequest(_message.Message):
    __slots__ = ("data", "name")
    DATA_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    name: str
    def __init__(self, data: _Optional[bytes] = ..., name: _Optional[str] = ...) -> None: ...

class RememberRequest(_message.Message):
    __slots__ = ("character_id", "text", "importance")
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMPORTANCE_FIELD_NUMBER: _ClassVar[int]
    character_id: str
    text: str
    importance: float
    def __init__(self, character_id: _Optional[str] = ..., text: _Optional[str] = ..., importance: _Optional[float] = ...) -> None: ...

class RememberResponse(_message.Message):
    __slots__ = ("importance",)
    IMPORTANCE_FIELD_NUMBER: _ClassVar[int]
    importance: float
    def __init__(self, importance: _Optional[float] = ...) -> None: ...

class SetRelationshipRequest(_message.Message):
    __slots__ = ("character_id", "who", "note")
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    WHO_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    character_id: str
    who: str
    note: str
    def __init__(self, character_id: _Optional[str] = ..., who: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class AllowRevealRequest(_message.Message):
    __slots__ = ("character_id", "secret")
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    character_id: str
    secret: str
    def __init__(self, character_id: _Optional[str] = ..., secret: _Optional[str] = ...) -> None: ...

class AllowRevealResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpdateCharacterRequest(_message.Message):
    __slots__ = ("character_id", "source", "profile", "background", "scenario", "goals", "secrets")
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    GOALS_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    character_id: str
    source: str
    profile: str
    background: str
    scenario: str
    goals: str
    secrets: str
    def __init__(self, character_id: _Optional[str] = ..., source: _Optional[str] = ..., profile: _Optional[str] = ..., background: _Optional[str] = ..., scenario: _Optional[str] = ..., goals: _Optional[str] = ..., secrets: _Optional[str] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "ready", "model", "adapter", "backend", "context_size", "prompt_style", "plan", "grammar", "expose_thoughts", "named_saves")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_SIZE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_STYLE_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_FIELD_NUMBER: _ClassVar[int]
    EXPOSE_THOUGHTS_FIELD_NUMBER: _ClassVar[int]
    NAMED_SAVES_FIELD_NUMBER: _ClassVar[int]
    version: str
    ready: bool
    model: str
    adapter: str
    backend: str
    context_size: int
    prompt_style: str
    plan: bool
    grammar: bool
    expose_thoughts: bool
    named_saves: bool
    def __init__(self, version: _Optional[str] = ..., ready: _Optional[bool] = ..., model: _Optional[str] = ..., adapter: _Optional[str] = ..., backend: _Optional[str] = ..., context_size: _Optional[int] = ..., prompt_style: _Optional[str] = ..., plan: _Optional[bool] = ..., grammar: _Optional[bool] = ..., expose_thoughts: _Optional[bool] = ..., named_saves: _Optional[bool] = ...) -> None: ...
