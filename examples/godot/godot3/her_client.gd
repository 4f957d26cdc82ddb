# her_sdk client for Godot 3 (GDScript, 3.2+): the Connect wire contract of examples/godot/README.md
# over Godot's HTTPClient. No add-on, no C#, no gRPC: copy this file into a project.
#
#   var Her = load("res://her_client.gd")
#   var her = Her.new("http://127.0.0.1:8080", "")       # url of `her serve --http-port`, token
#   her.wait_ready(60.0)                                   # until the model is loaded
#   var mara = her.call_rpc("CreateCharacter", {"persona": {"name": "Mara"}})
#   var result = her.turn({"sceneId": sid, "character": "Mara"}, self, "_on_delta")
#
# Every call returns a Dictionary: {"ok": true, "result": {...}} or {"ok": false, "code":
# "not_found", "message": "..."} (Connect codes; "unavailable" when the server cannot be reached).
# Calls block until answered (a turn: until it ends, passing each delta to the callback as it
# arrives), so in a game call them from a Thread; the Godot 4 add-on (addons/her) is
# non-blocking. This file is run for real by tests/test_godot.py in headless Godot 3.
extends Reference

const SERVICE_PATH = "/her.v1.HerService/"

var host = "127.0.0.1"
var port = 8080
var use_tls = false
var token = ""
var timeout_ms = 120000


func _init(url = "http://127.0.0.1:8080", bearer = ""):
	token = bearer
	use_tls = url.begins_with("https://")
	var rest = url.split("://", true, 1)[1] if "://" in url else url
	rest = rest.split("/", true, 1)[0]
	var colon = rest.rfind(":")
	if colon >= 0:
		host = rest.substr(0, colon)
		port = int(rest.substr(colon + 1, rest.length()))
	else:
		host = rest
		port = 443 if use_tls else 80


func _failure(code, message):
	return {"ok": false, "code": code, "message": message}


func _headers(content_type):
	var h = PoolStringArray(["Content-Type: " + content_type, "Connect-Protocol-Version: 1"])
	if token != "":
		h.append("Authorization: Bearer " + token)
	return h


# One HTTP exchange on a fresh connection. `sink` receives each body chunk (PoolByteArray) via
# sink.call(sink_method, chunk); returns {"status": int} or a failure.
func _exchange(method, content_type, body, sink, sink_method):
	var http = HTTPClient.new()
	if http.connect_to_host(host, port, use_tls) != OK:
		return _failure("unavailable", "cannot connect to %s:%d" % [host, port])
	var start = OS.get_ticks_msec()
	while http.get_status() == HTTPClient.STATUS_CONNECTING or http.get_status() == HTTPClient.STATUS_RESOLVING:
		http.poll()
		if OS.get_ticks_msec() - start > timeout_ms:
			return _failure("deadline_exceeded", "connecting timed out")
		OS.delay_msec(1)
	if http.get_status() != HTTPClient.STATUS_CONNECTED:
		return _failure("unavailable", "cannot connect to %s:%d" % [host, port])
	var err = http.request_raw(HTTPClient.METHOD_POST, SERVICE_PATH + method, _headers(content_type), body)
	if err != OK:
		return _failure("unavailable", "the request could not be sent")
	while http.get_status() == HTTPClient.STATUS_REQUESTING:
		http.poll()
		OS.delay_msec(1)
	if not http.has_response():
		return _failure("unavailable", "no answer from the server")
	var status = http.get_response_code()
	while http.get_status() == HTTPClient.STATUS_BODY:
		http.poll()
		var chunk = http.read_response_body_chunk()
		if chunk.size() == 0:
			OS.delay_msec(1)
		else:
			sink.call(sink_method, chunk)
		if OS.get_ticks_msec() - start > timeout_ms:
			http.close()
			return _failure("deadline_exceeded", "the call timed out")
	http.close()
	return {"status": status}


# -- unary calls ---------------------------------------------------------------------------------

var _body = PoolByteArray()


func _collect(chunk):
	_body.append_array(chunk)


func call_rpc(method, request):
	_body = PoolByteArray()
	var answer = _exchange(method, "application/json", to_json(request).to_utf8(), self, "_collect")
	if answer.has("code"):
		return answer
	var parsed = JSON.parse(_body.get_string_from_utf8())
	var data = parsed.result if parsed.error == OK and typeof(parsed.result) == TYPE_DICTIONARY else {}
	if answer["status"] == 200:
		return {"ok": true, "result": data}
	# A Connect error: {"code": ..., "message": ...}; without one, the code the HTTP status means.
	if data.has("code"):
		return _failure(data["code"], data.get("message", ""))
	var by_status = {401: "unauthenticated", 403: "permission_denied", 404: "unimplemented", 429: "unavailable", 502: "unavailable", 503: "unavailable", 504: "unavailable"}
	return _failure(by_status.get(answer["status"], "unknown"), "HTTP %d" % answer["status"])


func wait_ready(timeout_s = 120.0):
	var end = OS.get_ticks_msec() + int(timeout_s * 1000)
	while true:
		var info = call_rpc("GetServerInfo", {})
		if info["ok"] and info["result"].get("ready", false):
			return info
		if not info["ok"] and info["code"] != "unavailable":
			return info
		if OS.get_ticks_msec() > end:
			return _failure("deadline_exceeded", "the server was not ready in time")
		OS.delay_msec(250)


# -- the Turn stream -----------------------------------------------------------------------------

var _buffer = PoolByteArray()
var _turn = {}
var _target = null
var _target_method = ""


func _frames(chunk):
	_buffer.append_array(chunk)
	while _buffer.size() >= 5:
		var size = (_buffer[1] << 24) | (_buffer[2] << 16) | (_buffer[3] << 8) | _buffer[4]
		if _buffer.size() < 5 + size:
			return
		var flags = _buffer[0]
		var payload = _buffer.subarray(5, 4 + size).get_string_from_utf8() if size > 0 else ""
		_buffer = _buffer.subarray(5 + size, _buffer.size() - 1) if _buffer.size() > 5 + size else PoolByteArray()
		var parsed = JSON.parse(payload)
		var message = parsed.result if parsed.error == OK else {}
		if flags & 2:
			_turn["end"] = message
			continue
		for delta in message.get("deltas", []):
			if _target != null:
				_target.call(_target_method, delta)
		if message.has("summary"):
			_turn["summary"] = message["summary"]


# Runs a turn: `request` is a TurnRequest ({"sceneId": ..., "character": ..., "priority":
# "TURN_PRIORITY_PLAYER"}); each delta ({"channel": "CHANNEL_SPEECH", "text": ..., "segment": n})
# goes to target.call(method, delta) as it arrives. Returns {"ok": true, "result": summary} or a
# failure read from the end-of-stream message.
func turn(request, target = null, method = ""):
	_buffer = PoolByteArray()
	_turn = {}
	_target = target
	_target_method = method
	var payload = to_json(request).to_utf8()
	var size = payload.size()
	var body = PoolByteArray([0, (size >> 24) & 255, (size >> 16) & 255, (size >> 8) & 255, size & 255])
	body.append_array(payload)
	var answer = _exchange("Turn", "application/connect+json", body, self, "_frames")
	_target = null
	if answer.has("code"):
		return answer
	if answer["status"] != 200:
		return _failure("unknown", "HTTP %d" % answer["status"])
	if not _turn.has("end"):
		return _failure("internal", "the stream ended without its end-of-stream message")
	var end = _turn["end"]
	if typeof(end) == TYPE_DICTIONARY and end.has("error"):
		return _failure(end["error"].get("code", "unknown"), end["error"].get("message", ""))
	return {"ok": true, "result": _turn.get("summary", {})}
