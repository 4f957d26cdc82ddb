"""her eval coser: the GCA loop on scripted backends, the judge, the score formula, resume."""

from __future__ import annotations

import itertools
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

pytest.importorskip("nltk")
pytest.importorskip("rouge")

from her_sdk.evaluation import CoserSettings, run_coser, score_from_flaws, simulate
from her_sdk.evaluation._backends import BackendPool
from her_sdk.evaluation._metrics import extract_json, judge_flaws
from her_sdk.evaluation._prompts import DIMENSIONS

from her_sdk import MockBackend
from her_sdk._errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
TEST_SET = FIXTURES / "salt_road_records.json"
JUDGE = FIXTURES / "judge_script.json"
RECORDS = json.loads(TEST_SET.read_text())
NAMES = ["Wren", "Tomas", "Officer Hale"]


def _secret(name: str) -> str:
    return f"SECRET-{name.split()[-1].upper()}"


def actor_turn(prompt: str) -> str:
    """A HER turn by whoever the prompt is for, with a thought only that character knows."""
    name = re.search(r"You are (.+?) from", prompt).group(1)
    return (
        f"<system_thinking>PLAN-{name} stays guarded.</system_thinking>{name}: "
        f"<role_thinking>{_secret(name)} is what I hide</role_thinking>"
        f"<role_action>glances at the door</role_action>Say nothing of the stairs."
    )


def agent_reply(nsp: str = "Tomas"):
    def reply(prompt: str) -> str:
        if "predict the next speaker" in prompt:
            return f"1. Reasoning: it is their turn.\n2. Next Speaker: {nsp}"
        return "Rain hammers the glass."

    return reply


def _judge_from_script(prompt: str) -> str:
    script = json.loads(JUDGE.read_text())
    for key, value in script.items():
        if key in prompt:
            return json.dumps(value)
    raise AssertionError("judge prompt names no dimension")


# -- formula and parsing ------------------------------------------------------------------------


def test_score_formula_on_known_flaws():
    flaws = [{"severity": 3}, {"severity": 5}, {"severity": 1}]
    assert score_from_flaws(flaws, 0) == 100 - 5 * 9  # 55
    assert score_from_flaws(flaws, 10) == pytest.approx(100 - 5 * (9 - 3))  # 70
    assert score_from_flaws([], 0) == 100.0  # nothing wrong
    assert score_from_flaws([{"severity": 5}] * 30, 2) == 0.0  # clipped at 0
    assert score_from_flaws([{"severity": 1}], 20) == 100.0  # clipped at 100
    # CoSER sums integer severities only; HER's preset also counts floats.
    odd = [{"severity": 2}, {"severity": 2.5}, {"severity": "3"}]
    assert score_from_flaws(odd, 0) == 90.0
    assert score_from_flaws(odd, 0, preset="her") == pytest.approx(77.5)


def test_judge_answer_check_and_missing_severity():
    dims = list(DIMENSIONS)
    ans = {"Anthropomorphism": {"flaws": [{"instance": "x", "type": "y"}]}}
    flaws = judge_flaws(json.loads(json.dumps(ans)), "Anthropomorphism", dims)
    assert flaws == [{"instance": "x", "type": "y", "severity": 1}]  # CoSER: missing -> 1
    flaws_her = judge_flaws(json.loads(json.dumps(ans)), "Anthropomorphism", dims, "her")
    assert score_from_flaws(flaws_her, 0, "her") == 100.0  # HER: missing counts 0
    assert judge_flaws(ans, "Storyline Quality", dims) is None  # asked dimension absent
    assert judge_flaws({"Other": {"flaws": []}}, "Other", dims) is None
    assert judge_flaws({"Anthropomorphism": {"flaws": "none"}}, "Anthropomorphism", dims) is None
    # The longest JSON value in a chatty reply, newlines inside strings tolerated.
    text = (
        'Sure.\n<think>{"a": 1}</think>\n'
        '{"Anthropomorphism": {"flaws": [{"instance": "two\nlines", "severity": 2}]}}'
    )
    assert extract_json(text)["Anthropomorphism"]["flaws"][0]["severity"] == 2


# -- the simulation ------------------------------------------------------------------------------


def _settings(**kw) -> CoserSettings:
    return CoserSettings.for_preset(kw.pop("preset", "coser"), judge="mock:unused", **kw)


def test_gca_loop_keeps_each_mind_private():
    actor, agents = MockBackend(actor_turn), MockBackend(agent_reply())
    seen: list[tuple[str, str]] = []
    sim = simulate(
        RECORDS[0],
        0,
        actor,
        agents,
        agents,
        _settings(),
        on_prompt=lambda who, p: seen.append((who, p)),
    )
    assert seen and all(p in actor.prompts + agents.prompts for _, p in seen)
    for who, prompt in seen:
        for name in ("Wren", "Tomas"):
            if name != who:  # nobody else ever sees a character's thought or plan
                assert _secret(name) not in prompt, (who, name)
                assert f"PLAN-{name}" not in prompt
    # A character remembers its own thoughts, and the others perceive its public turn.
    wren_prompts = [p for who, p in seen if who == "Wren"]
    assert any(_secret("Wren") in p for p in wren_prompts[1:])
    tomas_prompts = [p for who, p in seen if who == "Tomas"]
    assert any("glances at the door" in p and "Wren" in p for p in tomas_prompts)
    # Every agent prompt of the environment and the NSP starts from the conversation start.
    assert all("===Conversation Start===" in p for who, p in seen if who in ("NSP", "Environment"))
    # The judged content has no thoughts or plans (CoSER removes them), and names the speaker.
    actor_msgs = [m for m in sim["transcript"] if m["role"] in NAMES]
    assert actor_msgs and all(m["content"].startswith(m["role"] + ": ") for m in actor_msgs)
    assert not any("SECRET" in m["content"] or "PLAN" in m["content"] for m in actor_msgs)
    assert "(glances at the door) Say nothing of the stairs." in actor_msgs[0]["content"]


def test_first_listed_speaker_starts_and_round_cap():
    actor, agents = MockBackend(actor_turn), MockBackend(agent_reply("Tomas"))
    sim = simulate(RECORDS[1], 1, actor, agents, agents, _settings())
    msgs = [m for m in sim["transcript"] if m["role"] != "NSP"]
    assert msgs[0]["role"] == "Environment"  # speaking_characters_w_env[0]
    assert sim["rounds"] == 20 and sim["end_reason"] == "max_rounds"
    # A repeated prediction (Tomas after Tomas) falls back to another speaker.
    assert all(a["role"] != b["role"] for a, b in itertools.pairwise(msgs))
    assert sim["nsp_fallbacks"] > 0
    her = simulate(RECORDS[1], 1, actor, agents, agents, _settings(preset="her"))
    assert her["rounds"] == 10


def test_end_chat_only_from_round_five():
    actor, agents = MockBackend(actor_turn), MockBackend(agent_reply("<END CHAT>"))
    sim = simulate(RECORDS[0], 0, actor, agents, agents, _settings())
    assert sim["rounds"] == 6 and sim["end_reason"] == "end_chat"
    nsp = [m for m in sim["transcript"] if m["role"] == "NSP"]
    assert [m["next"] == "<END CHAT>" for m in nsp] == [False] * 5 + [True]


# -- judge and run -------------------------------------------------------------------------------


def _write_agent_scripts(tmp_path: Path, judge: dict | None = None) -> dict:
    actor = {f"You are {n} from": actor_turn(f"You are {n} from") for n in NAMES}
    agents = {"predict the next speaker": "Next Speaker: <END CHAT>", "*": "A gull cries."}
    (tmp_path / "actor.json").write_text(json.dumps(actor))
    (tmp_path / "agents.json").write_text(json.dumps(agents))
    judge_path = JUDGE
    if judge is not None:
        judge_path = tmp_path / "judge.json"
        judge_path.write_text(json.dumps(judge))
    return {
        "actor": f"mock:{tmp_path / 'actor.json'}",
        "env": f"mock:{tmp_path / 'agents.json'}",
        "judge": f"mock:{judge_path}",
    }


def test_run_judges_each_dimension_once_and_scores(tmp_path):
    specs = _write_agent_scripts(tmp_path)
    pool = BackendPool()
    settings = CoserSettings.for_preset("coser", **specs)
    results = run_coser(TEST_SET, tmp_path / "run", settings, pool=pool)
    judge = pool.get(specs["judge"], "", "judge")
    assert len(judge.prompts) == 4 * len(RECORDS)  # one call per dimension per record
    for i, prompt in enumerate(judge.prompts):
        dim = list(DIMENSIONS)[i % 4]
        assert f"in terms of {dim}" in prompt
        rec = RECORDS[i // 4]
        assert rec["scenario"] in prompt and rec["plot"]["summary"] in prompt
        # The judge sees the gold dialogue without thoughts, and the profiles.
        assert "We go now, Tomas, or we hang." in prompt or i >= 4
        assert "The lantern is getting closer" not in prompt
        # As in both references, only the Character Fidelity criteria keep the placeholder.
        assert ("{major_characters}" in prompt) == (dim == "Character Fidelity")
    r0 = results["per_record"][0]
    R = r0["actor_rounds"]
    assert 0 < R <= 6  # END CHAT is accepted after the sixth message
    expect = {
        "storyline_consistency": min(100, 100 - 5 * (3 - 0.3 * R)),
        "anthropomorphism": min(100, 100 - 5 * (3 - 0.3 * R)),
        "character_fidelity": 100.0,
        "storyline_quality": min(100, 100 - 5 * (4 - 0.3 * R)),
    }
    for k, v in expect.items():
        assert r0["scores"][k] == pytest.approx(v)
    assert r0["scores"]["average"] == pytest.approx(sum(expect.values()) / 4)
    dims = [results["scores"][k] for k in expect]
    assert results["scores"]["average"] == pytest.approx(sum(dims) / 4)
    assert 0 <= results["scores"]["bleu"] <= 1 and 0 < results["scores"]["rouge_l"] <= 1
    assert results["parse_failures"]["total"] == 0
    for f in ("results.json", "report.md", "dimensions.png", "per_record.png"):
        assert (tmp_path / "run" / f).is_file()
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["records"] == 2 and set(saved["scores"]) >= {
        "storyline_consistency",
        "anthropomorphism",
        "character_fidelity",
        "storyline_quality",
        "average",
        "bleu",
        "rouge_l",
    }
    assert saved["settings"]["prompts_sha256"] and saved["settings"]["seed"] == 42


def test_parse_failures_are_retried_counted_and_not_scored(tmp_path):
    script = json.loads(JUDGE.read_text())
    script["in terms of Character Fidelity"] = "I refuse to answer in JSON."
    script["I will provide you with a JSON string"] = "still not JSON"
    specs = _write_agent_scripts(tmp_path, judge=script)
    pool = BackendPool()
    settings = CoserSettings.for_preset("coser", **specs)
    results = run_coser(TEST_SET, tmp_path / "run", settings, records=1, pool=pool)
    judge = pool.get(specs["judge"], "", "judge")
    cf = [p for p in judge.prompts if "in terms of Character Fidelity" in p]
    fixes = [p for p in judge.prompts if "I will provide you with a JSON string" in p]
    assert len(cf) == 6 and len(fixes) == 6  # first try + 5 retries, each with a repair request
    assert results["parse_failures"]["total"] == 1
    assert results["parse_failures"]["character_fidelity"] == ["The Salt Road-3-0"]
    assert results["scores"]["character_fidelity"] is None
    assert results["per_record"][0]["scores"]["average"] is None
    assert results["scored_records"]["character_fidelity"] == 0
    assert "parse failures" in (tmp_path / "run" / "report.md").read_text()


def test_resume_after_a_crash_continues_where_it_stopped(tmp_path):
    specs = _write_agent_scripts(tmp_path)
    settings = CoserSettings.for_preset("coser", **specs)
    pool = BackendPool()

    def crash(done, total, summary):
        raise KeyboardInterrupt  # killed after the first record

    with pytest.raises(KeyboardInterrupt):
        run_coser(TEST_SET, tmp_path / "run", settings, pool=pool, on_record=crash)
    first = json.loads((tmp_path / "run" / "results.json").read_text())
    assert first["records"] == 1
    actor = pool.get(specs["actor"], "", "actor")
    calls_before = len(actor.prompts)
    results = run_coser(TEST_SET, tmp_path / "run", settings, pool=pool)
    assert results["records"] == 2
    record0 = [p for p in actor.prompts[calls_before:] if "You are Wren from" in p]
    assert not record0  # the first record was not simulated again
    assert not list((tmp_path / "run").rglob("*.tmp"))  # atomic writes leave no debris
    # Other settings in the same directory are refused, not mixed in.
    other = CoserSettings.for_preset("her", **specs)
    with pytest.raises(ConfigError, match="other settings"):
        run_coser(TEST_SET, tmp_path / "run", other, pool=pool)


def test_her_preset_shows_thoughts_to_the_judge(tmp_path):
    specs = _write_agent_scripts(tmp_path)
    pool = BackendPool()
    run_coser(
        TEST_SET, tmp_path / "run", CoserSettings.for_preset("her", **specs), records=1, pool=pool
    )
    judge = pool.get(specs["judge"], "", "judge")
    assert "[SECRET-WREN is what I hide]" in judge.prompts[0]
    assert "[The lantern is getting closer.]" in judge.prompts[0]  # the gold dialogue, too
    assert "PLAN-" not in judge.prompts[0]


def test_her_preset_runs_a_her_model_as_hers_does(tmp_path):
    """The her preset: actors on HER's own prompt without a prefill or a grammar, a budget that
    holds HER's plans, and the environment and the next-speaker predictor on the judge model;
    every setting is recorded in results.json."""
    script = json.loads(JUDGE.read_text())
    script.update({"predict the next speaker": "Next Speaker: <END CHAT>", "*": "A gull cries."})
    (tmp_path / "judge.json").write_text(json.dumps(script))
    (tmp_path / "actor.json").write_text(
        json.dumps({f"You are {n} from": actor_turn(f"You are {n} from") for n in NAMES})
    )
    specs = {"actor": f"mock:{tmp_path / 'actor.json'}", "judge": f"mock:{tmp_path / 'judge.json'}"}
    settings = CoserSettings.for_preset("her", **specs)
    assert (settings.actor_prompt_style, settings.grammar, settings.actor_max_tokens) == (
        "her",
        False,
        4096,
    )
    pool = BackendPool()
    results = run_coser(TEST_SET, tmp_path / "run", settings, records=1, pool=pool)
    actor = pool.get(specs["actor"], "", "actor", prompt_style="her")
    assert actor.prompt_style == "her" and actor.prompts
    for prompt in actor.prompts:
        assert "Your output should follow this two-part structure in strict order:" in prompt
        assert prompt.endswith("<|im_start|>assistant\n")  # no prefill
    judge = pool.get(specs["judge"], "", "judge")
    env_prompts = [p for p in judge.prompts if "in terms of" not in p]
    assert env_prompts  # the environment and the NSP asked the judge model
    assert results["settings"]["actor_prompt_style"] == "her"
    assert results["settings"]["grammar"] is False
    # The coser preset keeps the model's own style and budget; both can be overridden.
    coser = CoserSettings.for_preset("coser", judge="x", actor_max_tokens=1024)
    assert coser.actor_prompt_style is None and coser.actor_max_tokens == 1024
    with pytest.raises(ConfigError, match="prompt style"):
        CoserSettings.for_preset("her", judge="x", actor_prompt_style="qwen")


HER_GOLDEN = json.loads((FIXTURES / "her_eval_golden.json").read_text())


@pytest.mark.parametrize("variant", ["her", "her_nosys"])
def test_her_preset_actors_get_hers_eval_prompts_byte_for_byte(variant):
    """The her preset's actors, against strings HER's eval code produced for the same scene
    (`her_eval_golden.json` says how: get_character_prompt, the agents' message updates and
    format_qwen_prompt of eval_code/benchmarks/multi_turn/coser/): each actor prompt, what the
    others are shown of every reply, and what the judge reads."""
    replies = HER_GOLDEN["replies"]
    actor = MockBackend([r for who, r in replies if who != "Environment"], prompt_style="her")
    env = MockBackend([r for who, r in replies if who == "Environment"])
    order = [who for who, _ in replies[1:]]
    nsp = MockBackend([f"Next Speaker: {who}" for who in order] + ["Next Speaker: Tomas"])
    settings = _settings(preset="her", plan=variant == "her", max_rounds=len(replies))
    seen: list[tuple[str, str]] = []
    sim = simulate(
        RECORDS[0], 0, actor, env, nsp, settings, on_prompt=lambda w, p: seen.append((w, p))
    )
    gold = HER_GOLDEN[variant]
    assert [(w, p) for w, p in seen if w in NAMES] == [tuple(x) for x in gold["prompts"]]
    assert actor.prompts == [p for _, p in gold["prompts"]]
    msgs = [m for m in sim["transcript"] if m["role"] != "NSP"]
    assert [[m["role"], m["content"]] for m in msgs] == gold["judge_view"]
    # The environment and the NSP were shown the same views as the actors, one message each.
    nsp_prompt = nsp.prompts[-1]
    for _who, view in gold["others_view"]:
        assert f"<|im_start|>user\n{view}<|im_end|>" in nsp_prompt
    # The reply cut inside its plan says so, and nothing of it reached anyone else.
    assert msgs[-1]["finish_reason"] == "plan_length" and sim["plan_cut_turns"] == 1
    assert "pushes harder" not in nsp_prompt


def test_her_preset_actors_never_pass_on_a_cut_thought():
    """HER's clean-up removes only closed thinking blocks; a reply cut inside a thought (or
    missing its opening tag) must still not show that thought to anyone else."""
    replies = [
        "<system_thinking>p</system_thinking>Wren: <role_action>waves</role_action>Hi. "
        "<role_thinking>SECRET-WREN is what I hide",
        "<system_thinking>p</system_thinking>Tomas: SECRET-TOMAS I keep</role_thinking>Hello.",
        "<system_thinking>p</system_thinking>Wren: Fine. [SECRET-BRACKET half",
    ]
    actor = MockBackend(replies, prompt_style="her")
    nsp = MockBackend(["Next Speaker: Tomas", "Next Speaker: Wren", "Next Speaker: Tomas"])
    seen: list[tuple[str, str]] = []
    simulate(
        RECORDS[0],
        0,
        actor,
        nsp,
        nsp,
        _settings(preset="her", max_rounds=3),
        on_prompt=lambda w, p: seen.append((w, p)),
    )
    later = [p for _, p in seen[1:]] + nsp.prompts
    for prompt in later:  # user messages: what each agent was shown of the others
        for shown in re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", prompt, re.S):
            assert "SECRET" not in shown, shown
    assert any("Wren: <role_action>waves</role_action>Hi." in p for p in later)
    assert any("Tomas:" in p and "Hello." in p for p in later)


def test_judge_is_required():
    with pytest.raises(ConfigError, match="judge"):
        CoserSettings.for_preset("coser")
    with pytest.raises(ConfigError, match="preset"):
        CoserSettings.for_preset("gpt", judge="x")


# -- an OpenAI-compatible server on 127.0.0.1 ---------------------------------------------------


class _Server(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict]] = []

    def log_message(self, *args):  # keep test output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "body": body})
        if self.path.endswith("/completions") and "prompt" in body:
            text = actor_turn(body["prompt"])
            chunk = {"choices": [{"text": text, "finish_reason": "stop"}]}
        else:
            system = body["messages"][0]["content"]
            if "literary critic" in system:
                dim = re.search(r"in terms of (.+?), i\.e\.", system).group(1)
                text = json.dumps({dim: {"flaws": [{"instance": "x", "type": "t", "severity": 2}]}})
            else:
                text = agent_reply("<END CHAT>")(system)
            chunk = {"choices": [{"delta": {"content": text}, "finish_reason": "stop"}]}
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())


def test_every_role_through_an_openai_compatible_server(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Server.seen = []
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        settings = CoserSettings.for_preset(
            "coser", actor=url, actor_model="her-test", judge=url, judge_model="judge-test"
        )
        results = run_coser(TEST_SET, tmp_path / "run", settings, records=1)
    finally:
        server.shutdown()
        server.server_close()
    actor_calls = [s for s in _Server.seen if "prompt" in s["body"]]
    chat_calls = [s for s in _Server.seen if "messages" in s["body"]]
    judge_calls = [
        s for s in chat_calls if "literary critic" in s["body"]["messages"][0]["content"]
    ]
    assert len(judge_calls) == 4
    assert {s["body"]["model"] for s in actor_calls} == {"her-test"}
    assert {s["body"]["model"] for s in judge_calls} == {"judge-test"}
    assert all(s["body"]["temperature"] == 0 for s in actor_calls + judge_calls)
    for s in actor_calls:  # isolation holds on the wire, too
        me = re.search(r"You are (.+?) from", s["body"]["prompt"]).group(1)
        for other in ("Wren", "Tomas"):
            if other != me:
                assert _secret(other) not in s["body"]["prompt"]
    for s in chat_calls:
        assert "SECRET" not in json.dumps(s["body"]["messages"])
    R = results["per_record"][0]["actor_rounds"]
    expected = min(100, 100 - 5 * (2 - 0.3 * R))
    assert results["scores"]["anthropomorphism"] == pytest.approx(expected)


@pytest.mark.slow
def test_gca_on_the_embedded_model_with_a_scripted_judge(tmp_path):
    pytest.importorskip("llama_cpp")
    settings = CoserSettings.for_preset("coser", judge=f"mock:{JUDGE}", max_rounds=3)
    seen: list[tuple[str, str]] = []
    results = run_coser(
        TEST_SET,
        tmp_path / "run",
        settings,
        records=1,
        on_prompt=lambda who, p: seen.append((who, p)),
    )
    assert results["records"] == 1 and results["parse_failures"]["total"] == 0
    assert results["per_record"][0]["rounds"] == 3
    record = json.loads((tmp_path / "run" / "records" / "0000.json").read_text())
    # Whatever the model thought stays out of every other agent's prompt, unless the thought
    # repeats text every agent sees anyway (a small model copies lines said aloud).
    assert _leaked_thoughts(record["simulation"]["transcript"], seen, RECORDS[0]) == []


def _public_corpus(transcript: list[dict], rec: dict) -> str:
    """Everything an agent may legitimately see: the record's setup (scenario, profiles,
    motivations), the prompts' own wording, and the public part of every turn."""
    from her_sdk.evaluation import _prompts

    from her_sdk.format import parse_turn

    setup = json.dumps({k: v for k, v in rec.items() if k != "dialogues"}, ensure_ascii=False)
    wording = [v for v in vars(_prompts).values() if isinstance(v, str)]
    public = []
    for m in transcript:
        if m["role"] in ("Wren", "Tomas"):
            turn = parse_turn(m["raw"], m["role"]).public()
            public += [*turn.actions, turn.speech]
        else:
            public.append(m["content"])
    return "\n".join([setup, *wording, *public])


def _leaked_thoughts(transcript: list[dict], seen: list[tuple[str, str]], rec: dict) -> list:
    """(thinker, thought, agent) for each thought of 12+ characters found in another agent's
    prompt that is not public text."""
    from her_sdk.format import parse_turn

    corpus = _public_corpus(transcript, rec)
    # An agent's own prompt holds its own private text: a thought it had too is no leak.
    own: dict[str, str] = {}
    for m in transcript:
        if m["role"] in ("Wren", "Tomas"):
            turn = parse_turn(m["raw"], m["role"])
            own[m["role"]] = own.get(m["role"], "") + "\n".join([turn.plan, *turn.thoughts])
    leaks = []
    for m in transcript:
        if m["role"] not in ("Wren", "Tomas"):
            continue
        for thought in parse_turn(m["raw"], m["role"]).thoughts:
            if len(thought) < 12 or thought in corpus:
                continue
            leaks += [
                (m["role"], thought, who)
                for who, p in seen
                if who != m["role"] and thought in p and thought not in own.get(who, "")
            ]
    return leaks


def test_the_leak_check_tells_a_leak_from_a_thought_that_repeats_public_text():
    line = "The officer's lantern is on the beach."
    turn = {
        "role": "Wren",
        "raw": f"<system_thinking>Stall.</system_thinking>Wren: <role_thinking>{line}"
        "</role_thinking><role_thinking>I hid the cargo under the stairs.</role_thinking>"
        "Keep your voice down.",
    }
    spoken = {"role": "Tomas", "raw": f"Tomas: {line}"}
    honest = [("Tomas", f"Wren: Keep your voice down.\nTomas: {line}")]
    assert _leaked_thoughts([spoken, turn], honest, RECORDS[0]) == []  # a copy of a public line
    leaky = [("Tomas", "Wren: [I hid the cargo under the stairs.] Keep your voice down.")]
    assert _leaked_thoughts([spoken, turn], leaky, RECORDS[0]) == [
        ("Wren", "I hid the cargo under the stairs.", "Tomas")
    ]
    # Tomas had the very thought himself: his prompt holds his own (a small model repeats).
    same = {"role": "Tomas", "raw": "Tomas: <role_thinking>I hid the cargo under the stairs."}
    assert _leaked_thoughts([same, turn], leaky, RECORDS[0]) == []
