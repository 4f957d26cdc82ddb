"""Drive an NPC through a running `her serve`, as a game would.

    her serve --save-dir saves &                  # terminal 1 (add --expose-thoughts to see minds)
    .venv/bin/python examples/python_client.py    # terminal 2

It shows what sets her_sdk apart: a typed action arriving as a call the game executes, the turn at
player priority, the private plan and thoughts (a "read mind" view, with --expose-thoughts),
a planted memory, and a save on the server (with --save-dir).

Options: --target host:port, --token T (if the server has --token), --ca cert.pem (TLS).
"""

from __future__ import annotations

import argparse

from her_sdk import Action
from her_sdk.client import Client, ServerError

ap = argparse.ArgumentParser()
ap.add_argument("--target", default="127.0.0.1:50051")
ap.add_argument("--token", default=None)
ap.add_argument("--ca", default=None, help="PEM certificate of a TLS server")
args = ap.parse_args()

with Client(args.target, token=args.token, root_certificates=args.ca) as her:
    info = her.wait_ready()  # the server may still be loading its model
    print(f"server: {info.model} ({info.backend}), thoughts exposed: {info.expose_thoughts}")
    mara = her.create_character(
        "Mara",
        profile="Captain of the north gate of Vell. Stern and tired; speaks in short sentences.",
        goals="Keep the gate shut until dawn without starting a fight.",
        max_tokens=96,
        actions=[Action("open_gate", "open the city gate"), Action("arrest", "arrest someone")],
    )
    her.remember(mara, "The traveler pulled my daughter Liss out of the river.", importance=9)
    scene = her.create_scene([mara], players="Traveler", name="The north gate")
    scene.narrate("Night at the north gate. Rain hammers the cobbles.")
    scene.say("Traveler", "Let me through, captain. I carry papers.", "holds up a sealed letter")

    label = {"plan": "plan", "thought": "thinks", "action": "does", "speech": "says"}
    print("Mara", end="")
    # Player priority: her first words come first; plan/thoughts only if the server allows.
    stream = scene.stream("Mara", private=True, priority="player")
    channel = None
    for delta in stream:
        if delta.channel != channel:
            channel = delta.channel
            print(f"\n  {label[channel]}: ", end="")
        print(delta.text, end="", flush=True)
    reply = stream.reply
    print(f"\n\nspeech: {reply.speech!r}  actions: {reply.actions}")
    print(
        f"{reply.completion_tokens} tokens in {reply.total_s * 1000:.0f} ms; first speech "
        + (f"after {reply.first_speech_s * 1000:.0f} ms" if reply.first_speech_s else "none")
    )
    for call in reply.calls:  # typed actions: the game executes them
        print(f"game: executing {call.name}({call.args})")
    try:
        print("saved as", scene.save("north-gate"))  # on the server, in --save-dir
    except ServerError as exc:
        print(f"not saved ({exc.code}): start the server with --save-dir")
    scene.delete()
