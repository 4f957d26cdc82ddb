// HerNpc: a Unity MonoBehaviour that gives one NPC a turn through a running `her serve`.
// Setup (stubs, packages): see README.md in this folder. Attach to a GameObject, press Play,
// then call Say("...") from your dialogue UI; the NPC's words stream into OnSpeech.
using System;
using System.Threading;
using Cysharp.Net.Http;            // YetAnotherHttpHandler: HTTP/2 for Unity's .NET
using Grpc.Core;
using Grpc.Net.Client;
using Her.V1;                      // generated from protos/her/v1/her.proto
using UnityEngine;

public class HerNpc : MonoBehaviour
{
    public string serverAddress = "http://127.0.0.1:50051";  // https://... with --tls-cert
    public string token = "";                                // set if `her serve --token`
    public string npcName = "Mara";
    [TextArea] public string profile = "Captain of the north gate of Vell. Stern, brief.";
    public string goals = "Keep the gate shut until dawn.";
    public string playerName = "Traveler";

    public event Action<string> OnSpeech;   // speech text as it streams (send to TTS/subtitles)
    public event Action<string> OnAction;   // visible actions ("crosses her arms")

    GrpcChannel _channel;
    HerService.HerServiceClient _client;
    Metadata _headers;
    string _sceneId;
    readonly CancellationTokenSource _quit = new CancellationTokenSource();

    async void Start()
    {
        _channel = GrpcChannel.ForAddress(serverAddress, new GrpcChannelOptions
        {
            HttpHandler = new YetAnotherHttpHandler { Http2Only = true },
            DisposeHttpClient = true,
        });
        _client = new HerService.HerServiceClient(_channel);
        _headers = string.IsNullOrEmpty(token) ? new Metadata()
                                               : new Metadata { { "authorization", $"Bearer {token}" } };
        var npc = await _client.CreateCharacterAsync(new CreateCharacterRequest
        {
            Persona = new Persona { Name = npcName, Profile = profile, Goals = goals },
        }, _headers);
        var scene = await _client.CreateSceneAsync(new CreateSceneRequest
        {
            CharacterIds = { npc.Id }, Players = { playerName },
        }, _headers);
        _sceneId = scene.Id;
        Debug.Log($"her: {npcName} is ready in scene {_sceneId}");
    }

    // Call from your dialogue UI: the player speaks, then the NPC takes its turn.
    public async void Say(string text)
    {
        if (_sceneId == null) return;
        await _client.SayAsync(new SayRequest { SceneId = _sceneId, Speaker = playerName, Text = text },
                               _headers);
        var request = new TurnRequest { SceneId = _sceneId, Character = npcName };
        // A deadline and the scene's lifetime bound the turn; cancelling stops generation.
        using var call = _client.Turn(request, _headers, DateTime.UtcNow.AddSeconds(60),
                                      _quit.Token);
        try
        {
            while (await call.ResponseStream.MoveNext(_quit.Token))
            {
                var msg = call.ResponseStream.Current;
                foreach (var d in msg.Deltas)            // continuations run on Unity's main thread
                {
                    if (d.Channel == Channel.Speech) OnSpeech?.Invoke(d.Text);
                    else if (d.Channel == Channel.Action) OnAction?.Invoke(d.Text);
                }
                if (msg.Summary != null)
                    Debug.Log($"her: {msg.Summary.Character} said \"{msg.Summary.Speech}\" " +
                              $"({msg.Summary.CompletionTokens} tokens, {msg.Summary.TotalMs:F0} ms)");
            }
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Cancelled) { }
    }

    void OnDestroy()
    {
        _quit.Cancel();
        _channel?.Dispose();
    }
}
