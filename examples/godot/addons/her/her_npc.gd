class_name HerNpc
extends Node
## An NPC that thinks before it acts. Put it under a HerScene; call take_turn() and connect the
## signals: `speech` and `action` stream as the model writes them, `calls` are the typed actions
## the game executes, `turn_finished` carries the whole summary. `plan` and `thought` (the
## private channels) come only when show_private is on and the server runs --expose-thoughts:
## for a debug view or a "read mind" mechanic.

signal speech(text: String)
signal action(text: String)
signal calls(list: Array)
signal turn_finished(summary: Dictionary)
signal failed(code: String, message: String)
signal plan(text: String)
signal thought(text: String)

@export var character_name := "Mara"
@export var source := ""
@export_multiline var profile := ""
@export_multiline var background := ""
@export_multiline var scenario := ""
@export_multiline var goals := ""
## Private: never in what the server answers (without --expose-thoughts), never said aloud.
@export_multiline var secrets := ""
## Typed actions: {"name": "open_gate", "description": "open the city gate", "params": [...]}
## as her.v1.ActionSpec in JSON; the character's calls arrive in the `calls` signal.
@export var actions: Array[Dictionary] = []
## Most tokens a turn may take.
@export var max_tokens := 120
## The shape of its turns: "game" (one action, one speech of at most three sentences), "free"
## (long plans and paragraphs), "default" (six sections); empty: the model's own.
@export_enum("", "game", "default", "free") var turn_shape := ""
## Ask for the private channels (honoured only by a server run with --expose-thoughts).
@export var show_private := false

var character_id := ""
var scene: HerScene


## Create the character on the server (HerScene.start() calls this).
func create(her: HerClient) -> bool:
	var persona := {
		"name": character_name,
		"source": source,
		"profile": profile,
		"background": background,
		"scenario": scenario,
		"goals": goals,
		"secrets": secrets,
	}
	var settings := {"actions": actions, "maxTokens": max_tokens}
	if turn_shape != "":
		settings["shape"] = {"preset": "TURN_SHAPE_PRESET_" + turn_shape.to_upper()}
	var made: Dictionary = await her.call_rpc(
		"CreateCharacter", {"persona": persona, "settings": settings}
	)
	if not made["ok"]:
		failed.emit(made["code"], made["message"])
		return false
	character_id = made["result"]["id"]
	return true


func _on_delta(delta: Dictionary) -> void:
	var text: String = delta.get("text", "")
	match delta.get("channel", ""):
		"CHANNEL_SPEECH":
			speech.emit(text)
		"CHANNEL_ACTION":
			action.emit(text)
		"CHANNEL_PLAN":
			plan.emit(text)
		"CHANNEL_THOUGHT":
			thought.emit(text)


## Generate this NPC's turn. `priority`: "TURN_PRIORITY_PLAYER" for the NPC the player is
## talking to (its first words come first), "TURN_PRIORITY_BACKGROUND" for ambient chatter.
func take_turn(priority := "TURN_PRIORITY_PLAYER") -> Dictionary:
	var request := {
		"sceneId": scene.scene_id,
		"character": character_name,
		"priority": priority,
		"includePrivate": show_private,
	}
	var done: Dictionary = await scene.client().turn(request, _on_delta)
	if not done["ok"]:
		failed.emit(done["code"], done["message"])
		return done
	var summary: Dictionary = done["result"]
	var executed: Array = []
	for call in summary.get("calls", []):
		var args := {}
		for arg in call.get("args", []):
			args[arg["name"]] = arg["value"]
		executed.append({"name": call["name"], "args": args})
	if not executed.is_empty():
		calls.emit(executed)
	turn_finished.emit(summary)
	return done


## Plant a fact in its long-term memory (importance 1-10; -1: rated by the server).
func remember(text: String, importance := -1.0) -> Dictionary:
	var request := {"characterId": character_id, "text": text}
	if importance > 0:
		request["importance"] = importance
	return await scene.client().call_rpc("Remember", request)


## How it regards `who` from now on (empty note: forget it).
func set_relationship(who: String, note: String) -> Dictionary:
	var request := {"characterId": character_id, "who": who, "note": note}
	return await scene.client().call_rpc("SetRelationship", request)


## Let it say its secret (or this part of it) aloud.
func allow_reveal(part := "") -> Dictionary:
	var request := {"characterId": character_id, "secret": part}
	return await scene.client().call_rpc("AllowReveal", request)


## Change persona fields mid-game: {"goals": ..., "scenario": ..., "profile": ...}.
func update_persona(fields: Dictionary) -> Dictionary:
	var request := fields.duplicate()
	request["characterId"] = character_id
	return await scene.client().call_rpc("UpdateCharacter", request)
