# Run by tests/test_godot.py in headless Godot 3 (godot3-server --no-window -s THIS):
# drives the Godot 3 client (examples/godot/godot3/her_client.gd) against a live `her serve`
# and prints one line "HER_RESULT <json>" for the test to check. Environment: HER_URL,
# HER_CLIENT (the client script's path).
extends SceneTree

var speech = ""
var deltas = 0
var channels = {}


func _on_delta(delta):
	deltas += 1
	channels[delta.get("channel", "")] = true
	if delta.get("channel", "") == "CHANNEL_SPEECH":
		speech += delta.get("text", "")


func _init():
	var Her = load(OS.get_environment("HER_CLIENT"))
	var her = Her.new(OS.get_environment("HER_URL"), OS.get_environment("HER_TOKEN"))
	var out = {}
	out["ready"] = her.wait_ready(120.0)
	var action = {"name": "open_gate", "description": "open the city gate"}
	var created = her.call_rpc("CreateCharacter", {
		"persona": {"name": "Mara", "profile": "Gate captain of Vell, stern and tired."},
		"settings": {"actions": [action], "maxTokens": 48, "seed": "7"}})
	out["created"] = created
	var cid = created["result"]["id"]
	var scene = her.call_rpc("CreateScene", {"characterIds": [cid], "players": ["Traveler"], "seed": "7"})
	var sid = scene["result"]["id"]
	out["said"] = her.call_rpc("Say", {"sceneId": sid, "speaker": "Traveler", "text": "Good evening, captain. Will you open the gate?"})
	out["turn"] = her.turn({"sceneId": sid, "character": "Mara", "priority": "TURN_PRIORITY_PLAYER"}, self, "_on_delta")
	out["streamed_speech"] = speech
	out["deltas"] = deltas
	out["channels"] = channels.keys()
	out["not_found"] = her.call_rpc("GetCharacter", {"characterId": "c-nope"})
	out["bad_turn"] = her.turn({"sceneId": sid, "character": "Nobody"}, self, "_on_delta")
	out["remember"] = her.call_rpc("Remember", {"characterId": cid, "text": "The traveler saved Liss."})
	print("HER_RESULT " + to_json(out))
	quit(0)
