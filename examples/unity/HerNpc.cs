// HerNpc: a Unity MonoBehaviour for one NPC of a running `her serve --http-port N`, over the
// JSON (Connect) API with the plain C# core in Her/HerHttpClient.cs: no NuGet packages, no
// stubs, and it works in WebGL builds (through UnityWebRequest there, see below).
//
// Attach to a GameObject, set serverUrl, wire the UnityEvents in the inspector (subtitles,
// TTS, animation), call Say("...") from your dialogue UI. Typed actions arrive in onCalls:
// "open_gate" / "give item=key to=Traveler" for the game to execute. Not compiled on the
// project's machines (no Unity there); the core it uses is (tests/test_unity_client.py).
using System;
using System.Collections;
using System.Collections.Generic;
using System.Text;
using Her;
using UnityEngine;
using UnityEngine.Events;
using UnityEngine.Networking;

public class HerNpc : MonoBehaviour
{
    [Serializable] public class TextEvent : UnityEvent<string> { }
    [Serializable] public class CallsEvent : UnityEvent<List<Dictionary<string, object>>> { }
    [Serializable] public class FailedEvent : UnityEvent<string, string> { }

    public string serverUrl = "http://127.0.0.1:8080";   // the "http" entry of --port-file
    public string token = "";                              // if `her serve` runs with a token
    public string npcName = "Mara";
    [TextArea] public string profile = "Captain of the north gate of Vell. Stern, tired, fair.";
    [TextArea] public string goals = "Keep the gate shut tonight.";
    [TextArea] public string secrets = "I let my brother through the north gate at midnight.";
    public string playerName = "Traveler";
    public bool readMind = false;   // private plan/thoughts: needs `her serve --expose-thoughts`

    public TextEvent onSpeech = new TextEvent();     // speech as it streams
    public TextEvent onAction = new TextEvent();     // visible actions
    public TextEvent onThought = new TextEvent();    // read-mind debug panel (plan and thoughts)
    public CallsEvent onCalls = new CallsEvent();    // typed actions for the game to execute
    public TextEvent onTurnFinished = new TextEvent(); // the whole speech of the turn
    public FailedEvent onFailed = new FailedEvent(); // (Connect code, message)

    HerHttpClient _client;
    string _sceneId, _characterId;

    static List<object> Actions()
    {
        var item = Json.Obj("name", "item", "values", Json.Obj("values", new List<object> { "key", "coin" }));
        var to = Json.Obj("name", "to", "target", "TARGET_ANYONE");
        return new List<object> {
            Json.Obj("name", "open_gate", "description", "open the city gate"),
            Json.Obj("name", "give", "description", "hand something over",
                     "params", new List<object> { item, to }),
        };
    }

    async void Start()
    {
#if !(UNITY_WEBGL && !UNITY_EDITOR)
        _client = new HerHttpClient(serverUrl, token);
#endif
        try
        {
            // The sidecar opens its port before its model is loaded: wait, with retries.
            await Call("GetServerInfo", new Dictionary<string, object>(), waitReady: true);
            var npc = await Call("CreateCharacter", Json.Obj(
                "persona", Json.Obj("name", npcName, "profile", profile, "goals", goals, "secrets", secrets),
                "settings", Json.Obj("actions", Actions())));
            _characterId = (string)npc["id"];
            var scene = await Call("CreateScene", Json.Obj(
                "characterIds", new List<object> { _characterId },
                "players", new List<object> { playerName }));
            _sceneId = (string)scene["id"];
        }
        catch (HerException e) { onFailed.Invoke(e.Code, e.Message); }
    }

    // The player speaks, then the NPC answers at player priority (its first words come first).
    public async void Say(string text)
    {
        if (_sceneId == null) return;
        try
        {
            await Call("Say", Json.Obj("sceneId", _sceneId, "speaker", playerName, "text", text));
            var request = Json.Obj("sceneId", _sceneId, "character", npcName,
                                   "priority", "TURN_PRIORITY_PLAYER", "includePrivate", readMind);
            var summary = await Turn(request, OnDelta);
            var calls = new List<Dictionary<string, object>>();
            foreach (Dictionary<string, object> call in (List<object>)summary["calls"])
            {
                var args = new Dictionary<string, object>();
                foreach (Dictionary<string, object> a in (List<object>)call["args"])
                    args[(string)a["name"]] = a["value"];
                calls.Add(Json.Obj("name", call["name"], "args", args));
            }
            if (calls.Count > 0) onCalls.Invoke(calls);
            onTurnFinished.Invoke((string)summary["speech"]);
        }
        catch (HerException e) { onFailed.Invoke(e.Code, e.Message); }
    }

    // Plant a fact ("The traveler saved my daughter") in the NPC's long-term memory.
    public async void Remember(string fact)
    {
        try { await Call("Remember", Json.Obj("characterId", _characterId, "text", fact)); }
        catch (HerException e) { onFailed.Invoke(e.Code, e.Message); }
    }

    public async void SaveGame(string slot)   // needs `her serve --save-dir DIR`
    {
        try { await Call("SaveScene", Json.Obj("sceneId", _sceneId, "name", slot)); }
        catch (HerException e) { onFailed.Invoke(e.Code, e.Message); }
    }

    public async void LoadGame(string slot)
    {
        try
        {
            var scene = await Call("LoadScene", Json.Obj("name", slot));
            await Call("DeleteScene", Json.Obj("sceneId", _sceneId));
            _sceneId = (string)scene["id"];
            _characterId = (string)((Dictionary<string, object>)((List<object>)scene["characters"])[0])["characterId"];
        }
        catch (HerException e) { onFailed.Invoke(e.Code, e.Message); }
    }

    void OnDelta(Dictionary<string, object> delta)
    {
        var text = (string)delta["text"];
        switch ((string)delta["channel"])
        {
            case "CHANNEL_SPEECH": onSpeech.Invoke(text); break;
            case "CHANNEL_ACTION": onAction.Invoke(text); break;
            default: onThought.Invoke(text); break;  // CHANNEL_PLAN, CHANNEL_THOUGHT
        }
    }

    async void OnDestroy()
    {
        if (_sceneId == null) return;
        try { await Call("DeleteScene", Json.Obj("sceneId", _sceneId)); }
        catch (HerException) { }
        _client?.Dispose();
    }

#if UNITY_WEBGL && !UNITY_EDITOR
    // WebGL: no sockets, so no HttpClient. UnityWebRequest goes through the browser's fetch,
    // which hands the body over when the response is complete: a turn's deltas arrive together
    // at its end (no token-by-token streaming in WebGL builds). The server needs
    // `--cors-origins https://your.game.host` when the page is served from another origin.
    System.Threading.Tasks.Task<Dictionary<string, object>> Call(
        string method, Dictionary<string, object> request, bool waitReady = false)
    {
        var done = new System.Threading.Tasks.TaskCompletionSource<Dictionary<string, object>>();
        StartCoroutine(Post(method, Encoding.UTF8.GetBytes(Json.Serialize(request)), "application/json",
            waitReady, body => done.SetResult((Dictionary<string, object>)Json.Parse(Encoding.UTF8.GetString(body))),
            e => done.SetException(e)));
        return done.Task;
    }

    System.Threading.Tasks.Task<Dictionary<string, object>> Turn(
        Dictionary<string, object> request, Action<Dictionary<string, object>> onDelta)
    {
        var payload = Encoding.UTF8.GetBytes(Json.Serialize(request));
        var body = new byte[payload.Length + 5];
        Frames.WriteHeader(body, 0, payload.Length);
        Buffer.BlockCopy(payload, 0, body, 5, payload.Length);
        var done = new System.Threading.Tasks.TaskCompletionSource<Dictionary<string, object>>();
        StartCoroutine(Post("Turn", body, "application/connect+json", false, answer =>
        {
            try { done.SetResult(Frames.ParseAll(answer, onDelta)); }
            catch (HerException e) { done.SetException(e); }
        }, e => done.SetException(e)));
        return done.Task;
    }

    IEnumerator Post(string method, byte[] body, string contentType, bool waitReady,
                     Action<byte[]> ok, Action<HerException> fail)
    {
        while (true)
        {
            using (var req = new UnityWebRequest(serverUrl.TrimEnd('/') + "/her.v1.HerService/" + method, "POST"))
            {
                req.uploadHandler = new UploadHandlerRaw(body);
                req.downloadHandler = new DownloadHandlerBuffer();
                req.SetRequestHeader("Content-Type", contentType);
                req.SetRequestHeader("Connect-Protocol-Version", "1");
                if (!string.IsNullOrEmpty(token)) req.SetRequestHeader("Authorization", "Bearer " + token);
                yield return req.SendWebRequest();
                var data = req.downloadHandler.data ?? new byte[0];
                var loading = req.responseCode == 0 || req.responseCode == 503;
                if (waitReady && (loading || !Encoding.UTF8.GetString(data).Contains("\"ready\": true")))
                {
                    yield return new WaitForSeconds(0.25f);
                    continue;
                }
                if (req.responseCode == 200) { ok(data); yield break; }
                var error = data.Length > 0 ? Json.Parse(Encoding.UTF8.GetString(data)) as Dictionary<string, object> : null;
                fail(new HerException(error != null ? (string)error["code"] : "unavailable",
                                      error != null ? (string)error["message"] : req.error));
                yield break;
            }
        }
    }
#else
    async System.Threading.Tasks.Task<Dictionary<string, object>> Call(
        string method, Dictionary<string, object> request, bool waitReady = false)
    {
        if (waitReady) return await _client.WaitReadyAsync(TimeSpan.FromMinutes(5));
        return await _client.CallAsync(method, request);
    }

    // HttpClient streams: each delta reaches OnDelta as it is generated. Continuations run on
    // Unity's main thread (its SynchronizationContext), so the events may touch the scene.
    System.Threading.Tasks.Task<Dictionary<string, object>> Turn(
        Dictionary<string, object> request, Action<Dictionary<string, object>> onDelta)
    {
        var context = System.Threading.SynchronizationContext.Current;
        return _client.TurnAsync(request, d => context.Post(_ => onDelta(d), null));
    }
#endif
}
