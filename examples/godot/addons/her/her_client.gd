class_name HerClient
extends Node
## her_sdk client for Godot 4 (GDScript only): the Connect wire contract of
## examples/godot/README.md over Godot's HTTPClient, without blocking the game.
##
## As the autoload "Her" (the add-on registers it) or a node of your own:
##     var info = await Her.wait_ready()
##     var made = await Her.call_rpc("CreateCharacter", {"persona": {"name": "Mara"}})
##     var done = await Her.turn({"sceneId": sid, "character": "Mara"}, _on_delta)
## Every call returns {"ok": true, "result": {...}} or {"ok": false, "code": "not_found",
## "message": "..."} (Connect codes; "unavailable" while the server starts or loads its model).
## Each call opens its own connection, so turns of several NPCs stream at once.

signal server_ready(info: Dictionary)
signal server_failed(code: String, message: String)

const SERVICE_PATH := "/her.v1.HerService/"
const BY_STATUS := {
	401: "unauthenticated",
	403: "permission_denied",
	404: "unimplemented",
	429: "unavailable",
	502: "unavailable",
	503: "unavailable",
	504: "unavailable",
}

## URL of `her serve --http-port N` (the "http" entry of its --port-file).
@export var url := "http://127.0.0.1:8080"
## Bearer token when the server runs with one (HER_SERVER_TOKEN).
@export var token := ""
## Longest a call may take, in seconds.
@export var timeout_s := 120.0
## Start waiting for the server when the node enters the tree (see server_ready).
@export var wait_on_ready := true

var is_ready := false
var info: Dictionary = {}


class _Sink:
	extends RefCounted
	## Collects a body, or splits a Connect stream into messages as bytes arrive.
	var body := PackedByteArray()
	var summary: Dictionary = {}
	var end = null
	var on_delta := Callable()

	func collect(chunk: PackedByteArray) -> void:
		body.append_array(chunk)

	func frames(chunk: PackedByteArray) -> void:
		body.append_array(chunk)
		while body.size() >= 5:
			var size := (body[1] << 24) | (body[2] << 16) | (body[3] << 8) | body[4]
			if body.size() < 5 + size:
				return
			var flags := body[0]
			var message = JSON.parse_string(body.slice(5, 5 + size).get_string_from_utf8())
			body = body.slice(5 + size)
			if typeof(message) != TYPE_DICTIONARY:
				message = {}
			if flags & 2:
				end = message
				continue
			for delta in message.get("deltas", []):
				if on_delta.is_valid():
					on_delta.call(delta)
			if message.has("summary"):
				summary = message["summary"]


func _ready() -> void:
	if wait_on_ready:
		wait_ready()


func _failure(code: String, message: String) -> Dictionary:
	return {"ok": false, "code": code, "message": message}


func _parts() -> Array:
	var tls := url.begins_with("https://")
	var rest := url.split("://", true, 1)[1] if "://" in url else url
	rest = rest.split("/", true, 1)[0]
	var colon := rest.rfind(":")
	if colon < 0:
		return [rest, 443 if tls else 80, tls]
	return [rest.substr(0, colon), int(rest.substr(colon + 1)), tls]


func _open(http: HTTPClient, limit: int) -> Dictionary:
	## Connect `http` to the server; {} when connected, else a failure.
	var parts := _parts()
	var tls_options: TLSOptions = TLSOptions.client() if parts[2] else null
	if http.connect_to_host(parts[0], parts[1], tls_options) != OK:
		return _failure("unavailable", "cannot connect to " + url)
	var start := Time.get_ticks_msec()
	while http.get_status() in [HTTPClient.STATUS_CONNECTING, HTTPClient.STATUS_RESOLVING]:
		http.poll()
		if Time.get_ticks_msec() - start > limit:
			return _failure("deadline_exceeded", "connecting timed out")
		await get_tree().process_frame
	if http.get_status() != HTTPClient.STATUS_CONNECTED:
		return _failure("unavailable", "cannot connect to " + url)
	return {}


func _exchange(
	method: String, content_type: String, body: PackedByteArray, sink: Callable
) -> Dictionary:
	var http := HTTPClient.new()
	var start := Time.get_ticks_msec()
	var limit := int(timeout_s * 1000.0)
	var failed: Dictionary = await _open(http, limit)
	if not failed.is_empty():
		return failed
	var headers := PackedStringArray(
		["Content-Type: " + content_type, "Connect-Protocol-Version: 1"]
	)
	if token != "":
		headers.append("Authorization: Bearer " + token)
	headers.append("Connect-Timeout-Ms: %d" % limit)
	if http.request_raw(HTTPClient.METHOD_POST, SERVICE_PATH + method, headers, body) != OK:
		return _failure("unavailable", "the request could not be sent")
	while http.get_status() == HTTPClient.STATUS_REQUESTING:
		http.poll()
		await get_tree().process_frame
	if not http.has_response():
		return _failure("unavailable", "no answer from the server")
	var status := http.get_response_code()
	while http.get_status() == HTTPClient.STATUS_BODY:
		http.poll()
		var chunk := http.read_response_body_chunk()
		if chunk.is_empty():
			await get_tree().process_frame
		else:
			sink.call(chunk)
		if Time.get_ticks_msec() - start > limit:
			http.close()
			return _failure("deadline_exceeded", "the call timed out")
	http.close()
	return {"status": status}


## One unary call: `request` is the rpc's request message as protobuf JSON (lowerCamelCase).
func call_rpc(method: String, request: Dictionary) -> Dictionary:
	var sink := _Sink.new()
	var body := JSON.stringify(request).to_utf8_buffer()
	var answer: Dictionary = await _exchange(method, "application/json", body, sink.collect)
	if answer.has("code"):
		return answer
	var data = JSON.parse_string(sink.body.get_string_from_utf8())
	if typeof(data) != TYPE_DICTIONARY:
		data = {}
	if answer["status"] == 200:
		return {"ok": true, "result": data}
	if data.has("code"):
		return _failure(data["code"], data.get("message", ""))
	return _failure(BY_STATUS.get(answer["status"], "unknown"), "HTTP %d" % answer["status"])


## Run a turn; each delta ({"channel": "CHANNEL_SPEECH", "text": ..., "segment": n}) goes to
## `on_delta` as it arrives. Returns {"ok": true, "result": summary} or a failure.
func turn(request: Dictionary, on_delta: Callable = Callable()) -> Dictionary:
	var sink := _Sink.new()
	sink.on_delta = on_delta
	var payload := JSON.stringify(request).to_utf8_buffer()
	var size := payload.size()
	var body := PackedByteArray(
		[0, (size >> 24) & 255, (size >> 16) & 255, (size >> 8) & 255, size & 255]
	)
	body.append_array(payload)
	var answer: Dictionary = await _exchange("Turn", "application/connect+json", body, sink.frames)
	if answer.has("code"):
		return answer
	if answer["status"] != 200 or sink.end == null:
		return _failure("internal", "the stream ended without its end-of-stream message")
	if sink.end.has("error"):
		var error: Dictionary = sink.end["error"]
		return _failure(error.get("code", "unknown"), error.get("message", ""))
	return {"ok": true, "result": sink.summary}


## Wait until the server answers and has loaded its model (a sidecar opens its port first).
func wait_ready() -> Dictionary:
	var end := Time.get_ticks_msec() + int(timeout_s * 1000.0)
	while true:
		var answer := await call_rpc("GetServerInfo", {})
		if answer["ok"] and answer["result"].get("ready", false):
			info = answer["result"]
			is_ready = true
			server_ready.emit(info)
			return answer
		if not answer["ok"] and answer["code"] != "unavailable":
			server_failed.emit(answer["code"], answer["message"])
			return answer
		if Time.get_ticks_msec() > end:
			server_failed.emit("deadline_exceeded", "the server was not ready in time")
			return _failure("deadline_exceeded", "the server was not ready in time")
		await get_tree().create_timer(0.25).timeout
	return {}
