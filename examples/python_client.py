"""Drive an NPC through a running `her serve`, as a game would.

    her serve &                                   # terminal 1 (add --expose-thoughts to see minds)
    .venv/bin/python examples/python_client.py    # terminal 2

Options: --target host:port, --token T (if the server has --token), --ca cert.pem (TLS).
"""

from __future__ import annotations

import argparse

from her_sdk.client import Client

ap = argparse.ArgumentParser()
ap.add_argument("--target", default="127.0.0.1:50051")
ap.add_argument("--token", default=None)
ap.add_argument("--ca", default=None, help="PEM certificate of a TLS server")
args = ap.parse_args()

with Client(args.target, token=args.token, root_certificates=args.ca) as her:
    mara = her.create_character(
        "Mara",
        profile="Captain of the north gate of Vell. Stern and tired; speaks in short sentences.",
        goals="Keep the gate shut until dawn without starting a fight.",
        max_tokens=96,
    )
    scene = her.create_scene([mara], players="Traveler", name="The north gate")
    scene.narrate("Night at the north gate. Rain hammers the cobbles.")
    scene.say("Traveler", "Let me through, captain. I carry papers.", "holds up a sealed letter")

    label = {"plan": "plan", "thought": "thinks", "action": "does", "speech": "says"}
    print("Mara", end="")
    stream = scene.stream("Mara", private=True)  # plan/thoughts only if the server allows
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
    scene.delete()
