@tool
extends EditorPlugin
## Registers the HerClient autoload ("Her") when the add-on is enabled.


func _enter_tree() -> void:
	add_autoload_singleton("Her", "res://addons/her/her_client.gd")


func _exit_tree() -> void:
	remove_autoload_singleton("Her")
