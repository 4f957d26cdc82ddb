// her_sdk client core for Unity and any .NET (plain C#, System.Net.Http only): the Connect wire
// contract of examples/godot/README.md (JSON over HTTP/1.1) to `her serve --http-port N`.
//
//   var her = new Her.HerHttpClient("http://127.0.0.1:8080");       // token optional
//   await her.WaitReadyAsync(TimeSpan.FromSeconds(60));
//   var mara = await her.CallAsync("CreateCharacter", Json.Obj("persona", Json.Obj("name", "Mara")));
//   var summary = await her.TurnAsync(Json.Obj("sceneId", sid, "character", "Mara"),
//                                     delta => Debug.Log(delta["text"]));
//
// Messages are protobuf JSON (lowerCamelCase) as Dictionary<string, object> / List<object> /
// string / double / bool. A failed call throws HerException with the Connect code ("not_found",
// "unavailable", ...). No Unity types here: tests/test_unity_client.py compiles this file with
// Mono's mcs and runs it against a live `her serve`. WebGL builds have no HttpClient: HerNpc.cs
// uses UnityWebRequest there (see examples/unity/README.md).
using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Net;
using System.Net.Http;
using System.Net.Http.Headers;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace Her
{
    public sealed class HerException : Exception
    {
        public readonly string Code;

        public HerException(string code, string message) : base(code + ": " + message)
        {
            Code = code;
        }
    }

    public sealed class HerHttpClient : IDisposable
    {
        const string ServicePath = "/her.v1.HerService/";
        readonly HttpClient http;
        readonly string baseUrl;
        readonly string token;

        public HerHttpClient(string baseUrl, string token = null, HttpMessageHandler handler = null)
        {
            this.baseUrl = baseUrl.TrimEnd('/');
            this.token = string.IsNullOrEmpty(token) ? null : token;
            http = handler == null ? new HttpClient() : new HttpClient(handler);
            http.Timeout = Timeout.InfiniteTimeSpan; // turns stream for as long as they take
        }

        public void Dispose() { http.Dispose(); }

        HttpRequestMessage Request(string method, byte[] body, string contentType)
        {
            var req = new HttpRequestMessage(HttpMethod.Post, baseUrl + ServicePath + method);
            req.Content = new ByteArrayContent(body);
            req.Content.Headers.ContentType = new MediaTypeHeaderValue(contentType);
            req.Headers.Add("Connect-Protocol-Version", "1");
            if (token != null)
                req.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
            return req;
        }

        // The Connect code an HTTP status means when the body carries none (the protocol's table).
        static string CodeOf(int status)
        {
            switch (status)
            {
                case 401: return "unauthenticated";
                case 403: return "permission_denied";
                case 404: return "unimplemented";
                case 429: case 502: case 503: case 504: return "unavailable";
                default: return "unknown";
            }
        }

        /// <summary>One unary call: the rpc's request as a JSON object; its answer.</summary>
        public async Task<Dictionary<string, object>> CallAsync(
            string method, Dictionary<string, object> request,
            CancellationToken cancel = default(CancellationToken))
        {
            var body = Encoding.UTF8.GetBytes(Json.Serialize(request));
            HttpResponseMessage resp;
            try
            {
                resp = await http.SendAsync(Request(method, body, "application/json"), cancel)
                    .ConfigureAwait(false);
            }
            catch (HttpRequestException e)
            {
                throw new HerException("unavailable", e.Message);
            }
            using (resp)
            {
                var text = await resp.Content.ReadAsStringAsync().ConfigureAwait(false);
                var data = text.Length > 0 ? Json.Parse(text) as Dictionary<string, object> : null;
                if (resp.StatusCode == HttpStatusCode.OK)
                    return data ?? new Dictionary<string, object>();
                if (data != null && data.ContainsKey("code"))
                    throw new HerException((string)data["code"], data.ContainsKey("message") ? (string)data["message"] : "");
                throw new HerException(CodeOf((int)resp.StatusCode), "HTTP " + (int)resp.StatusCode);
            }
        }

        /// <summary>Run a turn: each delta goes to onDelta as it arrives; returns the summary.</summary>
        public async Task<Dictionary<string, object>> TurnAsync(
            Dictionary<string, object> request, Action<Dictionary<string, object>> onDelta,
            CancellationToken cancel = default(CancellationToken))
        {
            var payload = Encoding.UTF8.GetBytes(Json.Serialize(request));
            var body = new byte[payload.Length + 5];
            Frames.WriteHeader(body, 0, payload.Length);
            Buffer.BlockCopy(payload, 0, body, 5, payload.Length);
            HttpResponseMessage resp;
            try
            {
                resp = await http.SendAsync(Request("Turn", body, "application/connect+json"),
                    HttpCompletionOption.ResponseHeadersRead, cancel).ConfigureAwait(false);
            }
            catch (HttpRequestException e)
            {
                throw new HerException("unavailable", e.Message);
            }
            using (resp)
            {
                if (resp.StatusCode != HttpStatusCode.OK)
                    throw new HerException(CodeOf((int)resp.StatusCode), "HTTP " + (int)resp.StatusCode);
                var stream = await resp.Content.ReadAsStreamAsync().ConfigureAwait(false);
                Dictionary<string, object> summary = null;
                var header = new byte[5];
                while (true)
                {
                    if (!await ReadExactly(stream, header, cancel).ConfigureAwait(false))
                        throw new HerException("internal", "the stream ended without its end-of-stream message");
                    var size = Frames.Size(header, 0);
                    var frame = new byte[size];
                    if (!await ReadExactly(stream, frame, cancel).ConfigureAwait(false))
                        throw new HerException("internal", "a truncated message");
                    var message = Json.Parse(Encoding.UTF8.GetString(frame)) as Dictionary<string, object>
                        ?? new Dictionary<string, object>();
                    if ((header[0] & 2) != 0)
                    {
                        Frames.ThrowIfError(message);
                        return summary ?? new Dictionary<string, object>();
                    }
                    object deltas;
                    if (onDelta != null && message.TryGetValue("deltas", out deltas))
                        foreach (var d in (List<object>)deltas)
                            onDelta((Dictionary<string, object>)d);
                    object s;
                    if (message.TryGetValue("summary", out s))
                        summary = (Dictionary<string, object>)s;
                }
            }
        }

        static async Task<bool> ReadExactly(Stream stream, byte[] buffer, CancellationToken cancel)
        {
            var got = 0;
            while (got < buffer.Length)
            {
                var n = await stream.ReadAsync(buffer, got, buffer.Length - got, cancel).ConfigureAwait(false);
                if (n == 0) return false;
                got += n;
            }
            return true;
        }

        /// <summary>Wait until the server answers and has loaded its model.</summary>
        public async Task<Dictionary<string, object>> WaitReadyAsync(
            TimeSpan timeout, CancellationToken cancel = default(CancellationToken))
        {
            var end = DateTime.UtcNow + timeout;
            while (true)
            {
                try
                {
                    var info = await CallAsync("GetServerInfo", new Dictionary<string, object>(), cancel)
                        .ConfigureAwait(false);
                    object ready;
                    if (info.TryGetValue("ready", out ready) && (bool)ready) return info;
                }
                catch (HerException e)
                {
                    if (e.Code != "unavailable") throw;
                }
                if (DateTime.UtcNow > end)
                    throw new HerException("deadline_exceeded", "the server was not ready in time");
                await Task.Delay(250, cancel).ConfigureAwait(false);
            }
        }
    }

    /// <summary>Connect envelopes: 1 flag byte, 4-byte big-endian length, the message.</summary>
    public static class Frames
    {
        public static void WriteHeader(byte[] buffer, int at, int size)
        {
            buffer[at] = 0;
            buffer[at + 1] = (byte)(size >> 24);
            buffer[at + 2] = (byte)(size >> 16);
            buffer[at + 3] = (byte)(size >> 8);
            buffer[at + 4] = (byte)size;
        }

        public static int Size(byte[] buffer, int at)
        {
            return (buffer[at + 1] << 24) | (buffer[at + 2] << 16) | (buffer[at + 3] << 8) | buffer[at + 4];
        }

        public static void ThrowIfError(Dictionary<string, object> end)
        {
            object error;
            if (!end.TryGetValue("error", out error)) return;
            var e = (Dictionary<string, object>)error;
            object message;
            throw new HerException((string)e["code"], e.TryGetValue("message", out message) ? (string)message : "");
        }

        /// <summary>A whole Turn response body (UnityWebRequest on WebGL): summary, deltas.</summary>
        public static Dictionary<string, object> ParseAll(byte[] body, Action<Dictionary<string, object>> onDelta)
        {
            Dictionary<string, object> summary = null;
            var at = 0;
            while (at + 5 <= body.Length)
            {
                var size = Size(body, at);
                var message = Json.Parse(Encoding.UTF8.GetString(body, at + 5, size)) as Dictionary<string, object>;
                if ((body[at] & 2) != 0)
                {
                    ThrowIfError(message);
                    return summary ?? new Dictionary<string, object>();
                }
                object deltas, s;
                if (onDelta != null && message.TryGetValue("deltas", out deltas))
                    foreach (var d in (List<object>)deltas) onDelta((Dictionary<string, object>)d);
                if (message.TryGetValue("summary", out s)) summary = (Dictionary<string, object>)s;
                at += 5 + size;
            }
            throw new HerException("internal", "the stream ended without its end-of-stream message");
        }
    }

    /// <summary>A small JSON reader/writer (Unity's JsonUtility cannot read free-form objects).</summary>
    public static class Json
    {
        public static Dictionary<string, object> Obj(params object[] keysAndValues)
        {
            var d = new Dictionary<string, object>();
            for (var i = 0; i + 1 < keysAndValues.Length; i += 2) d[(string)keysAndValues[i]] = keysAndValues[i + 1];
            return d;
        }

        public static string Serialize(object value)
        {
            var sb = new StringBuilder();
            Write(sb, value);
            return sb.ToString();
        }

        static void Write(StringBuilder sb, object v)
        {
            if (v == null) { sb.Append("null"); return; }
            var s = v as string;
            if (s != null) { WriteString(sb, s); return; }
            if (v is bool) { sb.Append((bool)v ? "true" : "false"); return; }
            var dict = v as IDictionary<string, object>;
            if (dict != null)
            {
                sb.Append('{');
                var first = true;
                foreach (var kv in dict)
                {
                    if (!first) sb.Append(',');
                    first = false;
                    WriteString(sb, kv.Key);
                    sb.Append(':');
                    Write(sb, kv.Value);
                }
                sb.Append('}');
                return;
            }
            var list = v as System.Collections.IEnumerable;
            if (list != null)
            {
                sb.Append('[');
                var first = true;
                foreach (var item in list)
                {
                    if (!first) sb.Append(',');
                    first = false;
                    Write(sb, item);
                }
                sb.Append(']');
                return;
            }
            sb.Append(Convert.ToString(v, CultureInfo.InvariantCulture));
        }

        static void WriteString(StringBuilder sb, string s)
        {
            sb.Append('"');
            foreach (var c in s)
            {
                switch (c)
                {
                    case '"': sb.Append("\\\""); break;
                    case '\\': sb.Append("\\\\"); break;
                    case '\n': sb.Append("\\n"); break;
                    case '\r': sb.Append("\\r"); break;
                    case '\t': sb.Append("\\t"); break;
                    default:
                        if (c < ' ') sb.Append("\\u").Append(((int)c).ToString("x4"));
                        else sb.Append(c);
                        break;
                }
            }
            sb.Append('"');
        }

        public static object Parse(string text)
        {
            var at = 0;
            var value = ReadValue(text, ref at);
            SkipSpace(text, ref at);
            if (at != text.Length) throw new FormatException("trailing characters in JSON");
            return value;
        }

        static void SkipSpace(string t, ref int at)
        {
            while (at < t.Length && char.IsWhiteSpace(t[at])) at++;
        }

        static object ReadValue(string t, ref int at)
        {
            SkipSpace(t, ref at);
            if (at >= t.Length) throw new FormatException("unexpected end of JSON");
            var c = t[at];
            if (c == '{')
            {
                var d = new Dictionary<string, object>();
                at++;
                SkipSpace(t, ref at);
                if (t[at] == '}') { at++; return d; }
                while (true)
                {
                    SkipSpace(t, ref at);
                    var key = ReadString(t, ref at);
                    SkipSpace(t, ref at);
                    at++; // ':'
                    d[key] = ReadValue(t, ref at);
                    SkipSpace(t, ref at);
                    if (t[at++] == '}') return d;
                }
            }
            if (c == '[')
            {
                var l = new List<object>();
                at++;
                SkipSpace(t, ref at);
                if (t[at] == ']') { at++; return l; }
                while (true)
                {
                    l.Add(ReadValue(t, ref at));
                    SkipSpace(t, ref at);
                    if (t[at++] == ']') return l;
                }
            }
            if (c == '"') return ReadString(t, ref at);
            if (t.Substring(at).StartsWith("true")) { at += 4; return true; }
            if (t.Substring(at).StartsWith("false")) { at += 5; return false; }
            if (t.Substring(at).StartsWith("null")) { at += 4; return null; }
            var start = at;
            while (at < t.Length && "+-0123456789.eE".IndexOf(t[at]) >= 0) at++;
            return double.Parse(t.Substring(start, at - start), CultureInfo.InvariantCulture);
        }

        static string ReadString(string t, ref int at)
        {
            var sb = new StringBuilder();
            at++; // opening quote
            while (t[at] != '"')
            {
                var c = t[at++];
                if (c != '\\') { sb.Append(c); continue; }
                var e = t[at++];
                switch (e)
                {
                    case 'n': sb.Append('\n'); break;
                    case 'r': sb.Append('\r'); break;
                    case 't': sb.Append('\t'); break;
                    case 'b': sb.Append('\b'); break;
                    case 'f': sb.Append('\f'); break;
                    case 'u':
                        sb.Append((char)Convert.ToInt32(t.Substring(at, 4), 16));
                        at += 4;
                        break;
                    default: sb.Append(e); break;
                }
            }
            at++;
            return sb.ToString();
        }
    }
}
