class_name HerScene
extends Node
## A scene on the server: the HerNpc nodes under it, the players, save and load.
##
##     $HerScene.start()                      # creates its NPCs and the scene (waits for Her)
##     await $HerScene.say("Player", "Open the gate!")
##     await $HerScene/Mara.take_turn()      # HerNpc signals speech/action/calls/turn_finished
## The scene is deleted on the server when this node leaves the tree.

signal started(scene_id: String)
signal failed(code: String, message: String)

## The HerClient to use; empty: the autoload "Her".
@export var client_path: NodePath
## Player names in the scene.
@export var players: PackedStringArray = PackedStringArray(["Player"])
## A seed makes every turn reproducible (also after save and load); -1: none.
@export var scene_seed := -1
## Call start() when the node is ready.
@export var autostart := true

var scene_id := ""


func _ready() -> void:
	if autostart:
		start()


func _exit_tree() -> void:
	if scene_id != "" and is_inside_tree():
		client().call_rpc("DeleteScene", {"sceneId": scene_id})


func client() -> HerClient:
	if client_path.is_empty():
		return get_node("/root/Her") as HerClient
	return get_node(client_path) as HerClient


func npcs() -> Array[HerNpc]:
	var found: Array[HerNpc] = []
	for child in get_children():
		if child is HerNpc:
			found.append(child)
	return found


## Wait for the server, create the NPCs, then the scene. Returns false (and emits failed) on
## an error.
func start() -> bool:
	var her := client()
	if not her.is_ready:
		var ready_answer: Dictionary = await her.wait_ready()
		if not ready_answer["ok"]:
			failed.emit(ready_answer["code"], ready_answer["message"])
			return false
	var ids: Array[String] = []
	for npc in npcs():
		if not await npc.create(her):
			return false
		ids.append(npc.character_id)
	var request := {"characterIds": ids, "players": players}
	if scene_seed >= 0:
		request["seed"] = str(scene_seed)
	var made: Dictionary = await her.call_rpc("CreateScene", request)
	if not made["ok"]:
		failed.emit(made["code"], made["message"])
		return false
	_bind(made["result"])
	started.emit(scene_id)
	return true


func _bind(scene: Dictionary) -> void:
	scene_id = scene["id"]
	for participant in scene.get("characters", []):
		for npc in npcs():
			if npc.character_name == participant["name"]:
				npc.character_id = participant["characterId"]
				npc.scene = self


## A player (or a scripted character) says and/or does something everyone present perceives.
func say(speaker: String, text: String, actions: Array = []) -> Dictionary:
	var request := {"sceneId": scene_id, "speaker": speaker, "text": text, "actions": actions}
	return await client().call_rpc("Say", request)


## Narration ("Environment: ...").
func narrate(text: String) -> Dictionary:
	return await client().call_rpc("Narrate", {"sceneId": scene_id, "text": text})


## Save on the server under `slot` (it needs --save-dir).
func save_game(slot: String) -> Dictionary:
	return await client().call_rpc("SaveScene", {"sceneId": scene_id, "name": slot})


## Replace this scene by the save `slot` (its NPCs get the saved minds and new ids).
func load_game(slot: String) -> Dictionary:
	var loaded: Dictionary = await client().call_rpc("LoadScene", {"name": slot})
	if loaded["ok"]:
		var old := scene_id
		_bind(loaded["result"])
		client().call_rpc("DeleteScene", {"sceneId": old})
	return loaded
