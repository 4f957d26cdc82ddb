extends Control
## The her_sdk Godot 4 demo: talk to Mara at the gate. Shows what sets her_sdk apart:
## - typed actions: Mara's `[open_gate]` / `[give item=key, to=Traveler]` arrive as calls the
##   game executes (the gate opens, the key lands in the inventory);
## - her turns run at player priority (TURN_PRIORITY_PLAYER): her first words come first even
##   while background NPCs talk on the same model;
## - a "read mind" panel with her private plan and thoughts (needs `her serve --expose-thoughts`);
## - save and load on the server (needs `her serve --save-dir DIR`).

var log_view := RichTextLabel.new()
var mind_view := RichTextLabel.new()
var input := LineEdit.new()
var gate := ColorRect.new()
var inventory: Array[String] = []

@onready var scene: HerScene = $Gate
@onready var mara: HerNpc = $Gate/Mara


func _ready() -> void:
	_build_ui()
	log_view.append_text("[i]Waiting for her serve…[/i]\n")
	scene.started.connect(func(_id): log_view.append_text("[i]Mara is at the gate.[/i]\n"))
	scene.failed.connect(_on_failed)
	mara.failed.connect(_on_failed)
	mara.speech.connect(func(text): log_view.append_text(text))
	mara.action.connect(func(text): log_view.append_text("[i]" + text + "[/i]"))
	mara.plan.connect(func(text): mind_view.append_text("[color=violet]" + text + "[/color]"))
	mara.thought.connect(func(text): mind_view.append_text("[color=cyan]" + text + "[/color]"))
	mara.calls.connect(_execute)
	mara.turn_finished.connect(func(_summary): log_view.append_text("\n"))


func _build_ui() -> void:
	var rows := VBoxContainer.new()
	rows.set_anchors_preset(Control.PRESET_FULL_RECT)
	add_child(rows)
	var panes := HBoxContainer.new()
	panes.size_flags_vertical = Control.SIZE_EXPAND_FILL
	rows.add_child(panes)
	for view in [log_view, mind_view]:
		view.bbcode_enabled = true
		view.scroll_following = true
		view.size_flags_horizontal = Control.SIZE_EXPAND_FILL
		panes.add_child(view)
	mind_view.append_text("[b]Read mind[/b] (her serve --expose-thoughts)\n")
	gate.custom_minimum_size = Vector2(0, 24)
	gate.color = Color.DARK_RED
	rows.add_child(gate)
	var bar := HBoxContainer.new()
	rows.add_child(bar)
	input.size_flags_horizontal = Control.SIZE_EXPAND_FILL
	input.placeholder_text = "Say something to Mara and press Enter"
	input.text_submitted.connect(_on_player_said)
	bar.add_child(input)
	for label in ["Save", "Load"]:
		var button := Button.new()
		button.text = label
		button.pressed.connect(_on_save if label == "Save" else _on_load)
		bar.add_child(button)


func _on_player_said(text: String) -> void:
	input.clear()
	log_view.append_text("[b]Traveler:[/b] " + text + "\n[b]Mara:[/b] ")
	mind_view.append_text("\n")
	var said: Dictionary = await scene.say("Traveler", text)
	if said["ok"]:
		await mara.take_turn("TURN_PRIORITY_PLAYER")


func _execute(list: Array) -> void:
	for call in list:
		match call["name"]:
			"open_gate":
				gate.color = Color.DARK_GREEN
				log_view.append_text("\n[i](the gate opens)[/i]")
			"give":
				inventory.append(call["args"].get("item", ""))
				log_view.append_text("\n[i](you receive: %s)[/i]" % call["args"].get("item", ""))


func _on_save() -> void:
	var saved: Dictionary = await scene.save_game("gate")
	log_view.append_text("[i]%s[/i]\n" % ("Saved." if saved["ok"] else saved["message"]))


func _on_load() -> void:
	var loaded: Dictionary = await scene.load_game("gate")
	log_view.append_text("[i]%s[/i]\n" % ("Loaded." if loaded["ok"] else loaded["message"]))


func _on_failed(code: String, message: String) -> void:
	log_view.append_text("[color=red]%s: %s[/color]\n" % [code, message])
