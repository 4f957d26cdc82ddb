"""The scene `her demo` plays: a gate captain and a smuggler at a border town, and a player.

    from her_sdk.demo import PLAYER, build_demo_scene
    scene = build_demo_scene(load_model())
    scene.say(PLAYER, "Let me through.")
    reply = scene.turn("Mara")

Public so that your tests, benchmarks and experiments can start from the same scene as the CLI
(`build_crowd_scene` is `her demo --crowd`'s side conversation). `SCRIPT` is the player's part.
"""

from __future__ import annotations

from ._backends._base import Backend
from ._character import Character
from ._scene import Scene

__all__ = [
    "CROWD_OPENING",
    "CROWD_TURNS",
    "PLAYER",
    "SCRIPT",
    "build_crowd_scene",
    "build_demo_scene",
]

PLAYER = "Traveler"

# The player's scripted lines, interleaved with NPC turns by `her demo`.
SCRIPT: list[tuple[str, str, str | None]] = [
    (
        "narrate",
        "Night at the north gate of Vell. Rain hammers the cobbles; a wine cart waits.",
        None,
    ),
    (
        "say",
        "Let me through, captain. I carry papers sealed by the duke himself.",
        "holds up a wax-sealed letter",
    ),
    ("turn", "Mara", None),
    ("turn", "Jory", None),
    ("say", "Jory, tell her. You know me, we rode in together from Essen.", None),
    ("turn", "Jory", None),
    ("turn", "Mara", None),
]


def build_demo_scene(model: Backend, seed: int | None = 2) -> Scene:
    mara = Character(
        name="Mara",
        source="the border town of Vell",
        profile="Captain of the north gate of Vell. Stern and tired, loyal to the duke, "
        "speaks in short sentences.",
        background="Twenty years in the guard. Smugglers on the Essen road killed her husband.",
        scenario="The duke ordered the gate shut tonight. A traveler and a smuggler's cart wait.",
        goals="Keep the gate shut until dawn without starting a fight.",
        secrets="She let her own brother through the gate last week, against orders.",
        others={"Jory": "A wine merchant who passes the gate every week.", PLAYER: "A stranger."},
        relationships={"Jory": "She suspects him but has never caught him."},
        model=model,
    )
    jory = Character(
        name="Jory",
        source="the border town of Vell",
        profile="A smuggler posing as a wine merchant. Charming, quick-tongued, never in a hurry.",
        scenario="His cart waits at the gate; the buyer expects it in Vell before dawn.",
        goals="Get the cart through the gate tonight, and keep the captain from looking inside.",
        secrets="The wine barrels hide rifles for the rebels.",
        others={
            "Mara": "Captain of the gate, stern and honest.",
            PLAYER: "A stranger he met on the road.",
        },
        model=model,
    )
    return Scene([mara, jory], player=PLAYER, name="The North Gate of Vell", seed=seed)


# `her demo --crowd`: two guards talk by the fire while the gate scene plays, on the same model.
CROWD_OPENING = "Hale, you hear the captain shut the gate? On a market night."
CROWD_TURNS = 4  # the guards' turns, taken one after the other in their own scene


def build_crowd_scene(model: Backend, seed: int | None = 3) -> Scene:
    """A side conversation: two off-duty guards at the guardhouse fire, who gossip about the
    gate. Its turns run as background turns beside the player's scene."""
    guards = {
        "Doran": "A young guard of the north gate, bored and hungry, who loves gossip.",
        "Hale": "An old soldier of the guard who misses the war and distrusts merchants.",
    }
    characters = [
        Character(
            name=name,
            source="the border town of Vell",
            profile=profile,
            scenario="Off duty at the guardhouse fire, in the rain, near the north gate.",
            others={other: guards[other] for other in guards if other != name},
            model=model,
        )
        for name, profile in guards.items()
    ]
    scene = Scene(characters, name="By the guardhouse fire", seed=seed)
    scene.say("Doran", CROWD_OPENING)
    return scene
