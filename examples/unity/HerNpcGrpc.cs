// HerNpcGrpc: the gRPC variant of HerNpc (desktop and mobile builds only: WebGL has no HTTP/2;
// HerNpc.cs over JSON needs no packages and runs everywhere). Setup (packages, stubs): see
// README.md in this folder. Attach to a GameObject, press Play, then call Say("...") from your
// dialogue UI; the NPC's words stream into OnSpeech. Not compiled on the project's machines
// (no .NET SDK or NuGet there).
using System;
using System.Threading;
using Cysharp.Net.Http;            // YetAnotherHttpHandler: HTTP/2 for Unity's .NET
using Grpc.Core;
using Grpc.Net.Client;
using Her.V1;                      // generated from protos/her/v1/her.proto
using UnityEngine;

public class HerNpcGrpc : MonoBehaviour
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
        // A sidecar opens its port before its model is loaded (and may not listen yet at all
        // on the game's first frame): retry until GetServerInfo says ready.
        while (!_quit.IsCancellationRequested)
        {
            try
            {
                var info = await _client.GetServerInfoAsync(new GetServerInfoRequest(), _headers,
                                                            DateTime.UtcNow.AddSeconds(5));
                if (info.Ready) break;
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable ||
                                         e.StatusCode == StatusCode.DeadlineExceeded) { }
            await System.Threading.Tasks.Task.Delay(250);
        }
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
        var request = new TurnRequest
        {
            SceneId = _sceneId, Character = npcName, Priority = TurnPriority.Player,
        };
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
                    foreach (var c in msg.Summary.Calls)   // typed actions for the game
                        Debug.Log($"her: {npcName} calls {c.Name}({string.Join(", ", c.Args)})");
                if (msg.Summary != null)
                    Debug.Log($"her: {msg.Summary.Character} said \"{msg.Summary.Speech}\" " +
                              $"({msg.Summary.CompletionTokens} tokens, {msg.Summary.TotalMs:F0} ms)");
            }
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Cancelled) { }
    }

    async void OnDestroy()
    {
        _quit.Cancel();
        if (_sceneId != null)
        {
            try   // the scene and its characters live on the server until deleted
            {
                await _client.DeleteSceneAsync(new DeleteSceneRequest { SceneId = _sceneId },
                                               _headers, DateTime.UtcNow.AddSeconds(2));
            }
            catch (RpcException) { }
        }
        _channel?.Dispose();
    }
}
