"""The README's game script: one NPC, one player line, a streamed reply. Runs offline.

.venv/bin/python examples/game_script.py
"""

from her_sdk import Character, Scene, load_model

model = load_model()  # the embedded default model; load_model("x.gguf") for any GGUF
mara = Character(
    name="Mara",
    profile="Gate captain of Vell, stern, loyal to the duke.",
    goals="keep the gate shut tonight",
    secrets="she let her brother through",
    model=model,
)
scene = Scene([mara], player="Traveler", seed=7)
scene.say("Traveler", "Let me through, I have papers.", action="holds up a letter")

stream = scene.stream("Mara")  # public channels only: action and speech, as tokens arrive
channel = None
for delta in stream:
    if delta.channel != channel:
        channel = delta.channel
        print(f"\n{channel}: ", end="")
    print(delta.text, end="", flush=True)
reply = stream.reply
print(f"\n\npublic:  actions={reply.actions} speech={reply.speech!r}")
print(f"private: plan={reply.plan!r} thoughts={reply.thoughts}")  # your debug view only
