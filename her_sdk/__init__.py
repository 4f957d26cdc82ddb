"""her_sdk: game characters that think before they act.

    from her_sdk import Character, Scene, load_model

    model = load_model()  # the embedded default model, offline
    mara = Character(name="Mara", profile="Gate captain of Vell.", goals="keep the gate shut",
                     model=model)
    scene = Scene([mara], player="Traveler")
    scene.say("Traveler", "Let me through, I have papers.")
    reply = scene.turn("Mara")  # .speech, .actions (public); .plan, .thoughts (private)

Every error it raises on purpose is a `HerError`; the subclasses exported here are the whole
hierarchy (`her_sdk._errors`). Importing this package is cheap: engines (llama.cpp, gRPC, torch)
load only when used.
"""

from __future__ import annotations

from ._actions import Action, Call, InvalidCall, Target, Text
from ._backends._base import Backend, CancelToken, Sampling, StopScanner, TextStream, cut_at_stop
from ._backends._mock import MockBackend
from ._character import Character
from ._errors import (
    AuthenticationError,
    BackendHTTPError,
    BackendUnavailableError,
    Cancelled,
    ConfigError,
    ContextOverflowError,
    DataError,
    GenerationError,
    HerError,
    InvalidModelError,
    LimitExceededError,
    MissingDependencyError,
    ModelError,
    ModelNotFoundError,
    NotFoundError,
    PermissionDeniedError,
    ServerError,
    StateError,
    VerificationError,
)
from ._memory import MemoryItem
from ._model import (
    BackendSpec,
    backend_from_spec,
    default_model_path,
    load_model,
    parse_backend_spec,
)
from ._persona import Persona
from ._savefile import atomic_write
from ._scene import Event, Scene
from ._secrets import BlockedReveal
from ._turn import Reply, TurnStream
from ._version import __version__
from .format import (
    Delta,
    Heard,
    Segment,
    Turn,
    TurnParser,
    TurnShape,
    build_grammar,
    parse_turn,
)

__all__ = [
    "Action",
    "AuthenticationError",
    "Backend",
    "BackendHTTPError",
    "BackendSpec",
    "BackendUnavailableError",
    "BlockedReveal",
    "Call",
    "CancelToken",
    "Cancelled",
    "Character",
    "ConfigError",
    "ContextOverflowError",
    "DataError",
    "Delta",
    "Event",
    "GenerationError",
    "Heard",
    "HerError",
    "InvalidCall",
    "InvalidModelError",
    "LimitExceededError",
    "LlamaBackend",
    "MemoryItem",
    "MissingDependencyError",
    "MockBackend",
    "ModelError",
    "ModelNotFoundError",
    "NotFoundError",
    "OnnxBackend",
    "OpenAIBackend",
    "PermissionDeniedError",
    "Persona",
    "Reply",
    "Sampling",
    "Scene",
    "Segment",
    "ServerError",
    "StateError",
    "StopScanner",
    "Target",
    "Text",
    "TextStream",
    "TransformersBackend",
    "Turn",
    "TurnParser",
    "TurnShape",
    "TurnStream",
    "VerificationError",
    "__version__",
    "atomic_write",
    "backend_from_spec",
    "build_grammar",
    "cut_at_stop",
    "default_model_path",
    "load_model",
    "parse_backend_spec",
    "parse_turn",
]


def __getattr__(name: str):
    # Engine backends live behind extras; resolve them lazily so `import her_sdk` stays cheap.
    if name == "LlamaBackend":
        from ._backends._llama import LlamaBackend

        return LlamaBackend
    if name == "OnnxBackend":
        from ._backends._onnx import OnnxBackend

        return OnnxBackend
    if name == "OpenAIBackend":
        from ._backends._openai import OpenAIBackend

        return OpenAIBackend
    if name == "TransformersBackend":
        from ._backends._transformers import TransformersBackend

        return TransformersBackend
    raise AttributeError(f"module 'her_sdk' has no attribute {name!r}")
