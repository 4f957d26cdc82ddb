// HerNpc: a Godot 4 (.NET) node that gives one NPC a turn through a running `her serve`.
// Add HerNpc.cs to a node, set the exported fields, call Say("...") (also from GDScript:
// $HerNpc.Say("Let me through.")) and connect to the Speech / Action signals.
using System;
using System.Threading;
using Godot;
using Grpc.Core;
using Grpc.Net.Client;
using Her.V1;   // generated at build time from protos/her/v1/her.proto (see HerClient.csproj)

public partial class HerNpc : Node
{
    [Export] public string ServerAddress = "http://127.0.0.1:50051";
    [Export] public string Token = "";
    [Export] public string NpcName = "Mara";
    [Export(PropertyHint.MultilineText)] public string Profile = "Captain of the north gate. Stern.";
    [Export] public string PlayerName = "Traveler";

    [Signal] public delegate void SpeechEventHandler(string text);   // streams as generated
    [Signal] public delegate void ActionEventHandler(string text);
    [Signal] public delegate void TurnFinishedEventHandler(string speech);

    GrpcChannel _channel;
    HerService.HerServiceClient _client;
    Metadata _headers = new Metadata();
    string _sceneId;
    readonly CancellationTokenSource _quit = new CancellationTokenSource();

    public override async void _Ready()
    {
        _channel = GrpcChannel.ForAddress(ServerAddress);   // .NET 8 HttpClient speaks HTTP/2
        _client = new HerService.HerServiceClient(_channel);
        if (Token != "") _headers.Add("authorization", $"Bearer {Token}");
        var npc = await _client.CreateCharacterAsync(new CreateCharacterRequest
        {
            Persona = new Persona { Name = NpcName, Profile = Profile },
        }, _headers);
        var scene = await _client.CreateSceneAsync(new CreateSceneRequest
        {
            CharacterIds = { npc.Id }, Players = { PlayerName },
        }, _headers);
        _sceneId = scene.Id;
    }

    public async void Say(string text)
    {
        if (_sceneId == null) return;
        await _client.SayAsync(new SayRequest { SceneId = _sceneId, Speaker = PlayerName, Text = text },
                               _headers);
        using var call = _client.Turn(new TurnRequest { SceneId = _sceneId, Character = NpcName },
                                      _headers, DateTime.UtcNow.AddSeconds(60), _quit.Token);
        try
        {
            while (await call.ResponseStream.MoveNext(_quit.Token))
            {
                var msg = call.ResponseStream.Current;
                foreach (var d in msg.Deltas)
                {
                    // Signals must be emitted on the main thread.
                    if (d.Channel == Channel.Speech) CallDeferred(GodotObject.MethodName.EmitSignal, SignalName.Speech, d.Text);
                    else if (d.Channel == Channel.Action) CallDeferred(GodotObject.MethodName.EmitSignal, SignalName.Action, d.Text);
                }
                if (msg.Summary != null)
                    CallDeferred(GodotObject.MethodName.EmitSignal, SignalName.TurnFinished, msg.Summary.Speech);
            }
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Cancelled) { }
    }

    public override void _ExitTree()
    {
        _quit.Cancel();
        _channel?.Dispose();
    }
}
