"""Typed actions: declared, prompted, constrained by the grammar, read back as calls, saved."""

from __future__ import annotations

import re

import pytest

from her_sdk import Character, ConfigError, MockBackend, Scene
from her_sdk._actions import Action, Call, Target, Text
from her_sdk.format import build_grammar, parse_call, render_call

ACTIONS = [
    Action("give", "hand something over", item=["key", "coin"], to=Target.ANYONE),
    Action("open_gate", "open the city gate"),
    Action("attack", target=Target.CHARACTER),
]


def scene_with(text: str, **kw) -> tuple[Scene, Character, MockBackend]:
    model = MockBackend(lambda p: text)
    mara = Character(name="Mara", model=model, actions=ACTIONS, **kw)
    jory = Character(name="Jory", model=MockBackend(lambda p: "Jory: Hm."))
    return Scene([mara, jory], player="Traveler"), mara, model


def test_calls_come_back_typed_beside_free_action_text():
    text = (
        "<system_thinking>Pay him.</system_thinking>Mara: <role_action>sighs</role_action>"
        "<role_action>[give item=key, to=Traveler]</role_action>Take it."
        "<role_action>[open_gate]</role_action>"
    )
    scene, mara, _ = scene_with(text)
    reply = scene.turn("Mara")
    assert reply.calls == [Call("give", {"item": "key", "to": "Traveler"}), Call("open_gate")]
    assert reply.invalid_calls == []
    assert reply.actions == ["sighs", "[give item=key, to=Traveler]", "[open_gate]"]
    # Others perceive the call as what she visibly did.
    assert scene.events[-1].actions == reply.actions


@pytest.mark.parametrize(
    ("written", "error"),
    [
        ("[fly to=moon]", "no action named 'fly'"),
        ("[give item=sword, to=Traveler]", "give.item is 'sword'; legal: 'key', 'coin'"),
        ("[give item=key, to=Ghost]", "give.to is 'Ghost'"),
        ("[give item=key]", "missing to"),
        ("[open_gate now=yes]", "unknown now"),
        ("[attack target=Mara]", "attack.target is 'Mara'"),  # never the actor itself
        ("[give item key]", "key=value"),
    ],
)
def test_invalid_calls_without_grammar_are_rejected_with_the_reason(written, error):
    scene, _, _ = scene_with(f"Mara: <role_action>{written}</role_action>No.")
    reply = scene.turn("Mara")
    assert reply.calls == []
    assert [c.text for c in reply.invalid_calls] == [written]
    assert error in reply.invalid_calls[0].error


def test_the_prompt_lists_the_actions_with_their_legal_values():
    scene, _, model = scene_with("Mara: Hm.")
    scene.turn("Mara")
    prompt = model.prompts[-1]
    section = prompt.split("===Actions You Can Take===\n")[1].split("\n\n===")[0]
    assert "- [give item=key|coin, to=Jory|Traveler]" in section
    assert "- [open_gate]" in section and "- [attack target=Jory]" in section


def test_grammar_admits_exactly_the_declared_calls():
    specs = [
        a.spec({Target.ANYONE: ["Jory", "Traveler"], Target.CHARACTER: ["Jory"]}) for a in ACTIONS
    ]
    g = build_grammar("Mara", calls=specs)
    assert 'call0 ::= "[give" " item=" ("key" | "coin") ", to=" ("Jory" | "Traveler") "]"' in g
    assert 'call1 ::= "[open_gate" "]"' in g
    assert re.search(r'action ::= "<role_action>" \(ftext \| call0 \| call1 \| call2\)', g)
    # With a closed set of free-text actions too, an action is one of those or a call.
    g = build_grammar("Mara", actions=["nods"], calls=specs[1:2])
    assert 'action ::= "<role_action>" ("nods" | call0) "</role_action>"' in g


def test_an_action_nobody_can_be_the_target_of_is_left_out():
    lonely = Character(name="Mara", model=MockBackend(lambda p: "Mara: Hm."), actions=ACTIONS)
    assert [s[0] for s in lonely._call_specs()] == ["open_gate"]
    lonely.hear("Jory", "Hello.")  # now she knows someone
    assert [s[0] for s in lonely._call_specs()] == ["give", "open_gate", "attack"]


def test_call_syntax_round_trips_and_refuses_bad_forms():
    written = render_call("give", {"item": "iron key", "to": "Mara"})
    assert written == "[give item=iron key, to=Mara]"
    assert parse_call(" [give item=iron  key, to=Mara] ") == (
        "give",
        {"item": "iron key", "to": "Mara"},
    )
    assert parse_call("[open_gate]") == ("open_gate", {})
    assert parse_call("opens the gate") is None
    for bad in ("[Give item=x]", "[give item=]", "[give item=a, item=b]"):
        with pytest.raises(ConfigError):
            parse_call(bad)
    with pytest.raises(ConfigError):
        render_call("give", {"item": "a,b"})


def test_action_declarations_are_checked():
    with pytest.raises(ConfigError, match="lower-case identifier"):
        Action("Give")
    with pytest.raises(ConfigError, match="non-empty list"):
        Action("give", item="key")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="without"):
        Action("give", item=["a,b"])
    with pytest.raises(ConfigError, match="unique"):
        Character(name="Mara", actions=[Action("wave"), Action("wave")])
    with pytest.raises(ConfigError):
        Text(0)


def test_typed_actions_are_saved():
    scene, mara, model = scene_with("Mara: Hm.")
    restored = Scene.loads(scene.dumps(), model=model).characters["Mara"]
    assert restored.actions == mara.actions == ACTIONS


def test_regard_updates_the_relationship_and_is_saved():
    text = "Mara: <role_action>[regard who=Traveler, view=saved my daughter; I owe him]"
    model = MockBackend(lambda p: text)
    mara = Character(
        name="Mara", model=model, actions=[Action.regard()], relationships={"Jory": "a rogue"}
    )
    scene = Scene([mara], player="Traveler")
    scene.set_relationship("Mara", "Traveler", "a stranger")
    assert mara.relationships == {"Jory": "a rogue", "Traveler": "a stranger"}
    reply = scene.turn("Mara")
    view = "saved my daughter; I owe him"
    assert reply.calls == [Call("regard", {"who": "Traveler", "view": view})]
    assert mara.relationships["Traveler"] == "saved my daughter; I owe him"
    scene.turn("Mara")
    assert "Traveler (Mara's view: saved my daughter; I owe him)" in model.prompts[-1]
    restored = Scene.loads(scene.dumps(), model=model).characters["Mara"]
    assert restored.relationships == mara.relationships
    assert restored.actions[0].updates_relationship
    mara.set_relationship("Jory", "")
    assert "Jory" not in mara.relationships


# -- the grammar on the real embedded model ---------------------------------------------------


@pytest.mark.slow
def test_200_seeded_turns_on_the_embedded_model_make_only_legal_calls():
    pytest.importorskip("llama_cpp")
    from concurrent.futures import ThreadPoolExecutor

    from her_sdk import load_model

    actions = [*ACTIONS, Action.regard(40)]
    by_name = {a.name: a for a in actions}

    def turn(model, seed: int) -> int:
        mara = Character(
            name="Mara",
            profile="Gate captain of Vell. Gruff, fair, quick to act.",
            model=model,
            plan=False,
            recall=0,
            actions=actions,
            # Every action segment is then one of these texts or a call.
            allowed_actions=["nods", "crosses her arms"],
        )
        scene = Scene([mara, Character(name="Jory")], player="Traveler")
        scene.say("Traveler", "Give me the key, captain, or open the gate! Jory, help me!")
        reply = scene.turn("Mara", seed=seed, max_tokens=40)
        assert reply.invalid_calls == [], (seed, reply.raw)
        names = mara._names()
        for call in reply.calls:
            by_name[call.name].check(call, names)  # raises on an illegal call
        if reply.finish_reason == "stop":  # a turn cut by max_tokens may end mid-tag
            for text in reply.actions:
                assert text in ("nods", "crosses her arms") or parse_call(text), (seed, text)
        return len(reply.calls)

    # Eight turns at a time: the backend decodes them together (one sequence each), which
    # halves the test's time; each turn keeps its own grammar, sampler and seed.
    with load_model(n_ctx=1024, max_sequences=8) as model, ThreadPoolExecutor(8) as pool:
        calls = sum(pool.map(lambda seed: turn(model, seed), range(200)))
    print(f"\n200 turns: {calls} calls, all legal")
    assert calls >= 5  # the grammar was exercised (14 calls at the time of writing)


# -- over gRPC -----------------------------------------------------------------------------------


def test_typed_actions_and_calls_travel_over_grpc():
    pytest.importorskip("grpc", reason="needs the grpc extra")
    from _grpc_util import connected

    from her_sdk.server import _convert as cv

    for action in [*ACTIONS, Action.regard(30), Action("say", line=Text(20))]:
        assert cv.action_from_pb(cv.action_to_pb(action)) == action
    turn = (
        "<system_thinking>Pay.</system_thinking>Mara: <role_action>[give item=coin, to=Traveler]"
        "</role_action><role_action>[give item=sword, to=Traveler]</role_action>Here."
    )
    with connected(MockBackend(lambda p: turn)) as (_, client):
        mara = client.create_character("Mara", actions=ACTIONS)
        scene = client.create_scene([mara], players=["Traveler"])
        scene.say("Traveler", "Pay me.")
        reply = scene.turn("Mara")
    assert reply.calls == [Call("give", {"item": "coin", "to": "Traveler"})]
    assert [c.text for c in reply.invalid_calls] == ["[give item=sword, to=Traveler]"]


def test_malformed_action_specs_over_grpc_are_invalid_argument():
    pytest.importorskip("grpc", reason="needs the grpc extra")
    from _grpc_util import connected

    from her_sdk.client import ServerError
    from her_sdk.server._pb import pb

    bad = [
        pb.ActionSpec(name="Give"),
        pb.ActionSpec(name="give", params=[pb.ActionParam(name="item")]),
        pb.ActionSpec(name="hit", params=[pb.ActionParam(name="to", target=pb.TARGET_UNSPECIFIED)]),
        pb.ActionSpec(name="regard", regard=True),
    ]
    with connected() as (_, client):
        for spec in bad:
            req = pb.CreateCharacterRequest(
                persona=pb.Persona(name="Mara"), settings=pb.CharacterSettings(actions=[spec])
            )
            with pytest.raises(ServerError) as info:
                client._call("CreateCharacter", req)
            assert info.value.code == "INVALID_ARGUMENT"
