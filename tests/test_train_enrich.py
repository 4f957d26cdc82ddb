"""HER data steps 2 and 4 (training.enrich) with scripted teachers: validated and resumable."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from her_sdk.training.data import convert_file, decode_her, read_jsonl, render_sample
from her_sdk.training.enrich import (
    complete_settings,
    enrich_thoughts,
    mock_setting_teacher,
    mock_thought_teacher,
    turn_shape,
    validate_setting,
    validate_thoughts,
)

from her_sdk import MockBackend
from her_sdk.format import MAX_THOUGHT_CHARS, Segment, Turn, parse_turn, render_turn

F = Path(__file__).parent / "fixtures" / "train"


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "coser.jsonl"
    convert_file("coser", F / "coser_test.json", path)
    return path


def _next_turn(prompt: str) -> tuple[str, str]:
    head = prompt.split("'s next turn ===\n")
    name = head[0].rsplit("=== ", 1)[1]
    line = head[1].split("\n")[0]
    return name, line[len(name) + 2 :]


def test_enrich_thoughts_keeps_public_text_and_updates_own_history(data, tmp_path):
    def teacher(prompt: str) -> str:  # a thought in front of every turn that has none
        _, body = _next_turn(prompt)
        if "<role_thinking>" in body:
            return body.replace("<role_thinking>", "<role_thinking>Careful now. ", 1)
        return f"<role_thinking>I will not show I am afraid</role_thinking>{body}"

    out = tmp_path / "t.jsonl"
    before = {r["id"]: r for r in read_jsonl(data)}
    rep = enrich_thoughts(data, out, MockBackend(teacher), concurrency=2)
    rows = read_jsonl(out)
    assert rep.kept == 2 and len(rows) == len(before) == 9  # 2 scenes, every sample kept
    assert rep.stats == {"enriched": 9, "unchanged": 0, "kept_original": 0, "actions_repaired": 0}
    for r in rows:
        persona, history, target = decode_her(r)
        old = decode_her(before[r["id"]])[2]
        assert target.public() == old.public()  # what others perceive is untouched
        assert target.plan == old.plan
        assert target.thoughts and target.thoughts != old.thoughts
        assert render_sample(persona, history, target) == (r["prompt"], r["completion"])
        for h in history:  # own earlier turns carry their enriched thoughts too
            if isinstance(h, Turn):
                assert any(t.startswith(("Careful now.", "I will not")) for t in h.thoughts)
        assert r["thoughts"] == "enriched"


def test_enrich_thoughts_rejects_changed_speech_and_keeps_the_original(data, tmp_path):
    def rewriter(prompt: str) -> str:
        return "<role_thinking>I lie now</role_thinking>Something else entirely."

    out = tmp_path / "t.jsonl"
    rep = enrich_thoughts(data, out, MockBackend(rewriter), retries=1)
    assert rep.kept == 0 and sum(rep.dropped.values()) == 2
    assert rep.rejections == {"changed actions or speech": 9 * 2}
    assert read_jsonl(out) == [] and len(read_jsonl(tmp_path / "t.rejected.jsonl")) == 2


def test_enrich_thoughts_is_resumable_by_scene(data, tmp_path):
    out = tmp_path / "t.jsonl"
    teacher = MockBackend(mock_thought_teacher)
    first = enrich_thoughts(data, out, teacher, limit=1)
    assert first.kept == 1
    calls = len(teacher.prompts)
    second = enrich_thoughts(data, out, teacher)
    assert second.resumed == 1 and second.kept == 1
    rows = read_jsonl(out)
    assert len(rows) == 9 and len({r["id"] for r in rows}) == 9
    assert len(teacher.prompts) - calls == len(rows) - calls  # each turn asked once overall


def test_validate_thoughts_rules():
    orig = parse_turn("Mara: <role_action>crosses her arms</role_action>Papers, now.", "Mara")

    def check(body: str, **kw) -> str | None:
        return validate_thoughts(parse_turn(f"Mara: {body}", "Mara"), orig, "Mara", **kw)

    ok = "<role_thinking>He is hiding something</role_thinking><role_action>crosses her arms"
    assert check(ok + "</role_action>Papers, now.") is None
    # a thought between two words of the speech is fine: the spoken words are unchanged
    assert (
        check(
            "<role_action>crosses her arms</role_action>Papers,"
            "<role_thinking>Do not blink</role_thinking> now."
        )
        is None
    )
    assert check("Papers, now.") == "changed actions or speech"  # the action is gone
    assert check("<role_action>crosses her arms</role_action>Papers, please.") == (
        "changed actions or speech"
    )
    long = "x " * MAX_THOUGHT_CHARS
    assert (
        check(
            f"<role_thinking>{long}</role_thinking>"
            "<role_action>crosses her arms</role_action>Papers, now."
        )
        == "thought too long"
    )
    assert (
        check(
            "<role_thinking>Mara thinks he lies</role_thinking><role_action>crosses her arms"
            "</role_action>Papers, now."
        )
        == "not first person"
    )
    assert (
        check(
            "<role_thinking>The user wants me to be strict</role_thinking><role_action>crosses her "
            "arms</role_action>Papers, now."
        )
        == "mentions the user"
    )
    assert (
        check(
            "<role_thinking>Tomorrow he will burn the whole gate down</role_thinking>"
            "<role_action>crosses her arms</role_action>Papers, now.",
            future="Brannoc: I will burn the whole gate down tomorrow night.",
        )
        == "knows later turns"
    )


def test_turn_shape():
    t = Turn.from_segments(
        [Segment("plan", "p"), Segment("action", "a"), Segment("thought", "t")]
        + [Segment("speech", "s")]
    )
    assert turn_shape(t) == "action->thought->speech"


def test_complete_settings_keeps_originals_and_reasoning(data, tmp_path):
    out = tmp_path / "s.jsonl"
    rep = complete_settings(data, out, MockBackend(mock_setting_teacher))
    rows = read_jsonl(out)
    assert rep.kept == 4 and len(rows) == 9  # (scene, character) groups; every sample
    for r in rows:
        persona, history, target = decode_her(r)
        old = r["persona_original"]
        assert persona.profile.startswith(old.get("profile", ""))
        assert "slow to trust" in persona.profile
        assert persona.background == old.get("background", "")
        assert "slow to trust" in r["prompt"][0]["content"]
        assert r["setting_reasoning"] and r["setting"] == "completed"
        assert render_sample(persona, history, target) == (r["prompt"], r["completion"])
    again = complete_settings(data, out, MockBackend(mock_setting_teacher))
    assert again.resumed == 4 and again.kept == 0 and len(read_jsonl(out)) == 9


def test_complete_settings_validation_drops_bad_answers(data, tmp_path):
    answers = {
        "dropper": {"profile": "A person.", "background": "", "goals": ""},
        "copier": None,
        "garbage": "not json at all",
    }

    def teacher_for(kind):
        def handler(prompt: str) -> str:
            if kind == "copier":  # pastes a line of the scene into the profile
                scene = prompt.split("plans in the scene ===\n")[1].split("\n\nComplete")[0]
                line = re.sub(r"<[^>]+>", " ", scene)
                m = prompt.split("profile: ")[1].split("\n")[0]
                return json.dumps({"profile": f"{m} {line} {line}", "reasoning": "x"})
            a = answers[kind]
            return a if isinstance(a, str) else json.dumps(a)

        return handler

    for kind, reason, n in (
        ("dropper", "profile: drops the original", 3),  # 1 sheet had no profile to drop
        ("copier", "profile: copies the scene", 2),  # 2 characters say under 8 words
        ("garbage", "unreadable answer", 4),
    ):
        out = tmp_path / f"{kind}.jsonl"
        rep = complete_settings(data, out, MockBackend(teacher_for(kind)), retries=0)
        assert rep.kept == 4 - n and rep.dropped == {reason: n}, (kind, rep.dropped)


def test_validate_setting_rules():
    orig = "Brannoc is the innkeeper, warm to guests and evasive about money."
    assert validate_setting(orig + " He fears the guild.", orig) is None
    assert validate_setting("An innkeeper.", orig) == "drops the original"
    assert validate_setting(orig + " x" * 900, orig) == "too long"
    assert validate_setting(orig + " <b>bold</b>", orig) == "markup"


def test_cli_enrich_and_complete(data, tmp_path):
    from typer.testing import CliRunner

    from her_sdk.cli import app

    runner = CliRunner()
    t, s = tmp_path / "t.jsonl", tmp_path / "s.jsonl"
    res = runner.invoke(
        app, ["data", "enrich-thoughts", str(data), "--out", str(t), "--teacher", "mock"]
    )
    assert res.exit_code == 0, res.output
    assert "kept 2" in res.output and len(read_jsonl(t)) == 9
    res = runner.invoke(
        app, ["data", "complete-settings", str(t), "--out", str(s), "--teacher", "mock"]
    )
    assert res.exit_code == 0, res.output
    assert "kept 4" in res.output and len(read_jsonl(s)) == 9
    assert "'scenarios_completed': 2" in res.output  # the fixture's two scenes
    n = tmp_path / "n.jsonl"
    res = runner.invoke(
        app,
        ["data", "complete-settings", str(t), "--out", str(n), "--teacher", "mock"]
        + ["--no-scenario"],
    )
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "n.scenarios.jsonl").exists()
    assert all("scenario_reasoning" not in r for r in read_jsonl(n))
    res = runner.invoke(
        app,
        [
            "data",
            "rm-pairs",
            str(s),
            "--out",
            str(tmp_path / "p.jsonl"),
            "--policy",
            "mock",
            "--teacher",
            "heuristic",
            "--corruptions",
            "repetition",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "length check" in res.output
    res = runner.invoke(
        app, ["data", "enrich-thoughts", str(data), "--out", str(t), "--teacher", "nonsense:x"]
    )
    assert res.exit_code == 1 and "unknown backend" in res.output
    assert render_turn  # the format module is the one contract (imported above)


BOOK_TEXT = (
    "The Salt Road Inn had not paid the guild in three winters. Brannoc had lost his brother "
    "to a guild debt and swore he would never kneel to a collector again. Ysolde knew it."
)


@pytest.fixture
def book_data(tmp_path) -> Path:
    """The CoSER book fixture with the book's text of its first plot (CoSER's `plot.text`)."""
    book = json.loads((F / "coser_book.json").read_text())
    book["plots"][0]["text"] = BOOK_TEXT
    (tmp_path / "book.json").write_text(json.dumps(book))
    path = tmp_path / "book.jsonl"
    convert_file("coser", tmp_path / "book.json", path)
    return path


def test_convert_keeps_the_books_text_for_grounding(book_data, tmp_path):
    from her_sdk.training.data import ConvertOptions

    rows = read_jsonl(book_data)
    inn = [r for r in rows if r["book"] and "Brannoc" in json.dumps(r["her"])]
    assert inn and all(r["source_text"] == BOOK_TEXT for r in inn)
    assert all("source_text" not in r for r in rows if r not in inn)  # that plot has none
    bare = tmp_path / "bare.jsonl"
    convert_file("coser", tmp_path / "book.json", bare, ConvertOptions(source_text=False))
    assert all("source_text" not in r for r in read_jsonl(bare))


def test_complete_settings_adds_only_what_the_books_text_says(book_data, tmp_path):
    """HER step 4 (step4_1_construct_setting_data.py, Rules 2 and 4: "SUPPLEMENT FROM
    original_text ONLY", "Every addition needs TEXT source quote"): with the book's text, a
    completion stands only with quotes found in it."""
    seen: list[str] = []

    def teacher(prompt: str) -> str:
        seen.append(prompt)
        return mock_setting_teacher(prompt)

    out = tmp_path / "grounded.jsonl"
    complete_settings(book_data, out, MockBackend(teacher))
    inn = [r for r in read_jsonl(out) if r.get("source_text")]
    assert inn
    for r in inn:
        persona = decode_her(r)[0]
        quote = r["setting_quotes"]["profile"][0]
        assert quote in BOOK_TEXT and quote in persona.profile
    assert any("=== The book's text of this part of the story ===" in p for p in seen)

    def liar(prompt: str) -> str:  # quotes what the book never says
        answer = json.loads("{" + mock_setting_teacher(prompt))
        if "quotes" in answer and "profile" in answer:
            answer["profile"] += " He once killed a guard."
            answer["quotes"] = {"profile": ["Brannoc once killed a guard at the bridge."]}
        return json.dumps(answer)

    def unquoted(prompt: str) -> str:  # completes without saying where it comes from
        answer = json.loads("{" + mock_setting_teacher(prompt))
        if "profile" in answer:
            answer.pop("quotes", None)
        return json.dumps(answer)

    for bad, reason in ((liar, "a quote not in the book's text"), (unquoted, "no quote")):
        rep = complete_settings(book_data, tmp_path / f"{bad.__name__}.jsonl", MockBackend(bad))
        dropped = {k: v for k, v in rep.dropped.items() if k.startswith("profile:")}
        assert dropped and all(reason in k for k in dropped), rep.dropped


def test_same_action_words_allows_only_hers_repairs():
    from her_sdk.training.enrich import same_action_words

    ok = [
        ("leans forward", "i lean forward"),
        ("leans forward voice lowering", "leans forward his voice lowering"),
        ("reaches for cup", "i reach for my cup"),  # HER drops the pronoun, adds nothing
    ]
    for new, old in ok:
        assert same_action_words(new, old), (new, old)
    for new, old in [
        ("walks away", "runs away"),
        ("forward leans", "leans forward"),
        ("leans forward slowly", "leans forward"),
        ("grabs arm", "grabs his arm tightly"),
    ]:
        assert not same_action_words(new, old), (new, old)


def _inn_scene(tmp_path: Path, first: str) -> Path:
    """A three-line CoSER scene, converted: Brannoc says `first`, Ysolde answers, Brannoc."""
    record = json.loads((F / "coser_test.json").read_text())[0]
    record["dialogues"] = [
        {"character": "Brannoc", "message": first},
        {"character": "Ysolde", "message": "(taps the ledger) I am listening."},
        {"character": "Brannoc", "message": "Then hear this."},
    ]
    (tmp_path / "t.json").write_text(json.dumps([record]))
    data = tmp_path / "t.jsonl"
    convert_file("coser", tmp_path / "t.json", data)
    return data


def test_enrich_thoughts_repairs_actions_and_everyone_perceives_the_repair(tmp_path):
    """HER step 2 repairs actions (role_thinking_enhance_prompt.py lines 85-131): no pronoun
    for the character itself, consecutive actions merged. The repaired turn is what every later
    sample of the scene perceives; speech never changes."""
    data = _inn_scene(tmp_path, "(I lean forward) (my voice drops low) Listen.")

    def teacher(prompt: str) -> str:
        name, line = _next_turn(prompt)
        if "lean forward" in line:
            return "<role_action>leans forward, voice dropping low</role_action>Listen."
        if "Listen" in line and name == "Brannoc":
            return "<role_action>leans forward, voice drops low</role_action>Listen!"
        return line

    out = tmp_path / "e.jsonl"
    rep = enrich_thoughts(data, out, MockBackend(teacher), retries=0)
    assert rep.stats["actions_repaired"] == 0  # "dropping" is not "drops": rejected, kept
    out2 = tmp_path / "e2.jsonl"

    def repairing(prompt: str) -> str:
        name, line = _next_turn(prompt)
        if name == "Brannoc" and "lean forward" in line:
            return "<role_action>leans forward, voice drops low</role_action>Listen."
        return line

    rep = enrich_thoughts(data, out2, MockBackend(repairing), retries=0)
    assert rep.stats["actions_repaired"] == 1
    rows = {(r["character"], r["turn"]): r for r in read_jsonl(out2)}
    _, _, first = decode_her(rows[("Brannoc", 0)])
    assert first.actions == ["leans forward, voice drops low"] and first.speech == "Listen."
    _, heard, _ = decode_her(rows[("Ysolde", 1)])
    assert heard[-1].actions == ["leans forward, voice drops low"]  # Ysolde perceives it
    _, own, _ = decode_her(rows[("Brannoc", 2)])
    assert any(getattr(h, "actions", None) == ["leans forward, voice drops low"] for h in own)


def test_validate_thoughts_lets_narration_leave_quoted_speech_only():
    """HER step 2: "动作和台词要分开" (role_thinking_enhance_prompt.py, "actions and speech
    apart": 'He turns to face her and says "Hello"' -> <role_action>turns to face her
    </role_action>Hello). Only what stands outside the quote marks may move, into an action,
    less its subject and the verb that introduced the words; spoken words never change."""
    quoted = parse_turn('Mara: He turns to face her and says "Papers, now." Then waits.', "Mara")
    unquoted = parse_turn("Mara: He turns to face her and says papers now.", "Mara")

    def check(body: str, orig=quoted) -> str | None:
        return validate_thoughts(parse_turn(f"Mara: {body}", "Mara"), orig, "Mara")

    assert (
        check(
            "<role_action>turns to face her</role_action>Papers, now.<role_action>waits"
            "</role_action>"
        )
        is None
    )
    assert (
        check(
            "<role_thinking>He lies</role_thinking><role_action>turns to face her and "
            "says</role_action>Papers, now. Then waits."
        )
        is None
    )  # less moved: fine
    assert check('He turns to face her and says "Papers, now." Then waits.') is None
    changed = "changed actions or speech"
    assert (
        check("<role_action>turns to face her</role_action>Papers.<role_action>waits</role_action>")
        == changed
    )  # a spoken word lost
    assert (
        check(
            "<role_action>turns to face her, frowning</role_action>Papers, now."
            "<role_action>waits</role_action>"
        )
        == changed
    )  # a word added
    assert (
        check(
            "<role_action>turns to face her says Papers</role_action>now."
            "<role_action>waits</role_action>"
        )
        == changed
    )  # spoken words made an action
    assert check("<role_action>turns to face her</role_action>Papers, now. Then waits.") is None
    assert check("turns to face her Papers, now. Then waits.") is None  # subject dropped only
    # without quote marks, nothing tells narration from speech: the speech stays whole
    assert check("<role_action>turns to face her</role_action>papers now.", unquoted) == changed


def test_enrich_thoughts_moves_narration_out_of_speech_for_everyone(tmp_path):
    data = _inn_scene(tmp_path, 'He leans close and says "Listen to me."')

    def teacher(prompt: str) -> str:
        name, line = _next_turn(prompt)
        if name == "Brannoc" and "leans close" in line:
            return "<role_action>leans close</role_action>Listen to me."
        return line

    out = tmp_path / "e.jsonl"
    rep = enrich_thoughts(data, out, MockBackend(teacher), retries=0)
    assert rep.stats["actions_repaired"] == 1 and rep.stats["kept_original"] == 0
    rows = {(r["character"], r["turn"]): r for r in read_jsonl(out)}
    _, _, first = decode_her(rows[("Brannoc", 0)])
    assert first.actions == ["leans close"] and first.speech == "Listen to me."
    _, heard, _ = decode_her(rows[("Ysolde", 1)])
    assert heard[-1].actions == ["leans close"] and heard[-1].speech == "Listen to me."
    seen = "\n".join(m["content"] for m in rows[("Ysolde", 1)]["prompt"])
    assert "Listen to me." in seen and "says" not in seen
    _, own, _ = decode_her(rows[("Brannoc", 2)])
    assert any(getattr(h, "speech", None) == "Listen to me." for h in own)


# -- HER step 4 beyond the sheet: the scene's scenario, a character's description and experience


def _book(tmp_path: Path, *, her_profile: bool = False, text: str = BOOK_TEXT) -> Path:
    """The CoSER book fixture, its first plot with the book's text and HER's per-plot
    description and experience of Brannoc (CoSER's `plot.key_characters`)."""
    from her_sdk.training.data import ConvertOptions

    book = json.loads((F / "coser_book.json").read_text())
    plot = book["plots"][0]
    plot["text"] = text
    plot["key_characters"][0]["experience"] = "Brannoc stalls the collector with cider."
    (tmp_path / "book.json").write_text(json.dumps(book))
    path = tmp_path / ("her_book.jsonl" if her_profile else "book.jsonl")
    convert_file("coser", tmp_path / "book.json", path, ConvertOptions(her_profile=her_profile))
    return path


def test_her_profile_renders_as_hers_step_4_3():
    """HER's system prompt holds a character's description and experience in its Profile
    section (step4_3_rebuild_system_prompt.py, build_system_prompt): the "her" prompt style
    renders a persona whose profile `her_profile` made exactly as HER's code did (golden)."""
    from her_sdk.training.data import her_profile, split_her_profile

    from her_sdk import Persona
    from her_sdk.format._her import build_her_messages

    g = json.loads((F / "her_step4_3_golden.json").read_text())
    c = g["char_data"]
    profile = her_profile(
        c["character_profile_enriched"], c["description_enriched"], c["experience"]
    )
    persona = Persona(
        name=g["name"],
        source=g["book"],
        profile=profile,
        background=c["background"],
        scenario=c["scenario_enriched"],
        goals=c["motivation"],
        others=c["other_character_profiles"],
    )
    system = build_her_messages(persona, [], plan=True)[0].content
    cut = "===Requirements===\n"
    assert system.split(cut)[0] == g["system_prompt"].split(cut)[0]
    assert split_her_profile(profile) == (
        c["character_profile_enriched"],
        c["description_enriched"],
        c["experience"],
    )
    assert split_her_profile("Just a profile.") == ("Just a profile.", "", "")
    assert her_profile("P", experience="E") == "P\nexperience: E"


def test_convert_keeps_description_and_experience(tmp_path):
    rows = read_jsonl(_book(tmp_path))
    brannoc = [r for r in rows if r["character"] == "Brannoc"]
    assert brannoc and all(r["description"] == "Innkeeper of the Salt Road Inn." for r in brannoc)
    assert all(r["experience"] == "Brannoc stalls the collector with cider." for r in brannoc)
    assert all("description:" not in decode_her(r)[0].profile for r in rows)
    tobin = [r for r in rows if r["character"] == "Tobin"]
    assert tobin and all("experience" not in r for r in tobin)  # its plot has none
    composed = read_jsonl(_book(tmp_path, her_profile=True))
    profile = decode_her(next(r for r in composed if r["character"] == "Brannoc"))[0].profile
    assert profile == (
        "description: Innkeeper of the Salt Road Inn.\nBrannoc keeps the Salt Road Inn.\n"
        "experience: Brannoc stalls the collector with cider."
    )


def test_complete_settings_completes_the_scenario_once_per_scene(tmp_path):
    """HER step 4 completes the scene's scenario ("scenario: Scene description (shared)",
    step4_1_construct_setting_data.py, its output's "scenario_enriched"): one call per scene,
    grounded in the book's text, and every character of the scene gets the same one."""
    data = _book(tmp_path)
    seen: list[str] = []

    def teacher(prompt: str) -> str:
        seen.append(prompt)
        return mock_setting_teacher(prompt)

    out = tmp_path / "s.jsonl"
    rep = complete_settings(data, out, MockBackend(teacher))
    scene_calls = [p for p in seen if "=== The scenario ===" in p]
    scenes = {r["scene"] for r in read_jsonl(data)}
    assert len(scene_calls) == len(scenes) == rep.stats["scenarios_completed"]
    rows = read_jsonl(out)
    inn = [r for r in rows if r.get("source_text")]
    assert {r["character"] for r in inn} == {"Brannoc", "Ysolde"}
    first = BOOK_TEXT.split(". ")[0] + "."
    for r in inn:
        persona = decode_her(r)[0]
        assert persona.scenario == f"A rainy night at the inn. In the story: {first}"
        assert r["setting_quotes"]["scenario"] == [first] and r["scenario_reasoning"]
        assert persona.scenario in "\n".join(m["content"] for m in r["prompt"])
        assert r["persona_original"]["scenario"] == "A rainy night at the inn."
    # the character pass saw the completed scenario in the sheet
    sheets = [p for p in seen if "=== Fields to complete ===" in p and "Salt Road" in p]
    assert sheets and all("In the story: " + first in p.split("=== Fields")[0] for p in sheets)
    # the scene's behaviour (every character's) is what the scenario pass was shown
    inn_call = next(p for p in scene_calls if "A rainy night" in p)
    assert "What Brannoc says" in inn_call and "What Ysolde says" in inn_call
    assert "Collector! Sit, sit." in inn_call and "shakes rain from her cloak" in inn_call
    # a scenario every character reads is never made from one character's private thoughts
    assert "Tonight he pays" not in inn_call and "Not now" not in inn_call
    again = complete_settings(data, out, MockBackend(teacher))
    assert again.kept == 0 and len(seen) == len(scene_calls) + len(sheets) + 3  # nothing new


def test_complete_settings_scenario_failures_keep_the_scene_whole(tmp_path):
    data = _book(tmp_path)

    def unquoted(prompt: str) -> str:  # the scenario's addition has no quote from the book
        answer = json.loads("{" + mock_setting_teacher(prompt))
        if "scenario" in answer:
            answer.pop("quotes", None)
        return json.dumps(answer)

    out = tmp_path / "c.jsonl"
    rep = complete_settings(data, out, MockBackend(unquoted), retries=0)
    assert rep.stats["scenarios_failed"] == 1 and rep.stats["scenarios_completed"] == 2
    inn = [r for r in read_jsonl(out) if r.get("source_text")]
    assert inn and all(decode_her(r)[0].scenario == "A rainy night at the inn." for r in inn)
    assert all("scenario" not in r["setting_quotes"] for r in inn)
    rejected = read_jsonl(tmp_path / "c.scenarios.rejected.jsonl")
    assert [r.get("reason") for r in rejected] == ["scenario: no quote from the book's text"]
    # with a limit, a scene's characters wait for its scenario pass
    lim = tmp_path / "l.jsonl"
    complete_settings(data, lim, MockBackend(mock_setting_teacher), limit=1)
    done = {r["id"] for r in read_jsonl(tmp_path / "l.scenarios.jsonl")}
    assert len(done) == 1 and {r["scene"] for r in read_jsonl(lim)} <= done


def test_complete_settings_completes_description_and_experience(tmp_path):
    """HER's output has "description_enriched" and "experience_enriched" per character, and
    step 4.3 rebuilds the profile from them: with HER's profile lines, the completed persona's
    profile is `her_profile` of the completed parts; the samples carry the completed fields."""
    from her_sdk.training.data import her_profile

    data = _book(tmp_path, her_profile=True)
    first = BOOK_TEXT.split(". ")[0] + "."
    second = BOOK_TEXT.split(". ")[1] + "."

    def teacher(prompt: str) -> str:
        answer = json.loads("{" + mock_setting_teacher(prompt))
        if answer.get("experience"):
            answer["experience"] += f" {second}"
            answer["quotes"]["experience"] = [second]
        return json.dumps(answer)

    out = tmp_path / "d.jsonl"
    complete_settings(data, out, MockBackend(teacher), scenario=False)
    rows = [r for r in read_jsonl(out) if r["character"] == "Brannoc"]
    assert rows
    for r in rows:
        assert r["experience"] == f"Brannoc stalls the collector with cider. {second}"
        assert r["description"] == "Innkeeper of the Salt Road Inn."
        profile = decode_her(r)[0].profile
        assert profile == her_profile(
            f"Brannoc keeps the Salt Road Inn. In the story: {first}",
            r["description"],
            r["experience"],
        )
        assert r["setting_quotes"]["experience"] == [second]
    assert not (tmp_path / "d.scenarios.jsonl").exists()

    def dropper(prompt: str) -> str:  # loses what the experience said
        answer = json.loads("{" + mock_setting_teacher(prompt))
        if answer.get("experience"):
            answer["experience"] = "Rests."
        return json.dumps(answer)

    rep = complete_settings(
        data, tmp_path / "x.jsonl", MockBackend(dropper), scenario=False, retries=0
    )
    assert "experience: drops the original" in rep.dropped
