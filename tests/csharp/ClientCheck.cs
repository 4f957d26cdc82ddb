// Run by tests/test_unity_client.py: the C# client core (examples/unity/Her/HerHttpClient.cs),
// compiled by Mono's mcs, against a live `her serve` (URL in argv[0]). Prints "HER_RESULT {json}".
using System;
using System.Collections.Generic;
using System.Text;
using Her;

static class ClientCheck
{
    static int Main(string[] args)
    {
        var her = new HerHttpClient(args[0]);
        var output = new Dictionary<string, object>();
        var info = her.WaitReadyAsync(TimeSpan.FromSeconds(120)).Result;
        output["ready"] = info["ready"];
        var action = Json.Obj("name", "open_gate", "description", "open the city gate");
        var mara = her.CallAsync("CreateCharacter", Json.Obj(
            "persona", Json.Obj("name", "Mara", "profile", "Gate captain of Vell."),
            "settings", Json.Obj("actions", new List<object> { action }, "maxTokens", 48, "seed", "3"))).Result;
        var cid = (string)mara["id"];
        var scene = her.CallAsync("CreateScene", Json.Obj(
            "characterIds", new List<object> { cid }, "players", new List<object> { "Traveler" })).Result;
        var sid = (string)scene["id"];
        her.CallAsync("Say", Json.Obj("sceneId", sid, "speaker", "Traveler",
            "text", "Captain, will you open the gate for me?")).Wait();
        var speech = new StringBuilder();
        var deltas = 0;
        var channels = new List<object>();
        var summary = her.TurnAsync(Json.Obj("sceneId", sid, "character", "Mara",
            "priority", "TURN_PRIORITY_PLAYER"), d => {
                deltas++;
                var ch = (string)d["channel"];
                if (!channels.Contains(ch)) channels.Add(ch);
                if (ch == "CHANNEL_SPEECH") speech.Append((string)d["text"]);
            }).Result;
        output["summary"] = summary;
        output["deltas"] = deltas;
        output["streamed_speech"] = speech.ToString();
        output["channels"] = channels;
        try
        {
            her.CallAsync("GetCharacter", Json.Obj("characterId", "c-nope")).Wait();
            output["error"] = "none";
        }
        catch (AggregateException e)
        {
            output["error"] = ((HerException)e.InnerException).Code;
        }
        try
        {
            her.TurnAsync(Json.Obj("sceneId", sid, "character", "Nobody"), null).Wait();
            output["turn_error"] = "none";
        }
        catch (AggregateException e)
        {
            output["turn_error"] = ((HerException)e.InnerException).Code;
        }
        her.CallAsync("DeleteScene", Json.Obj("sceneId", sid)).Wait();
        Console.WriteLine("HER_RESULT " + Json.Serialize(output));
        return 0;
    }
}
