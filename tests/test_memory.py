"""Long-term memory on the mock backend: recall across saves, relevance, privacy, summaries."""

from __future__ import annotations

import re

import pytest

from her_sdk import Character, ConfigError, MockBackend, Scene
from her_sdk._bm25 import BM25, tokenize
from her_sdk._memory import MemoryStore, rate_importance


class Model(MockBackend):
    """A mock that tells HER turns from the memory's own calls (summaries, ratings)."""

    def __init__(self, turn: str = "Mara: Hm.", summary: str = "SUMMARY-1", **kw) -> None:
        self.summary_calls: list[str] = []
        self.rating_calls: list[str] = []
        self.turn_prompts: list[str] = []
        self.summary_text = summary
        self.turn_text = turn

        def handler(prompt: str) -> str:
            if "What happened after that:" in prompt:
                self.summary_calls.append(prompt)
                return f"{self.summary_text} #{len(self.summary_calls)}"
            if "You rate memories" in prompt:
                self.rating_calls.append(prompt)
                n = len(re.findall(r"^\d+\. ", prompt, re.M))
                return "\n".join(
                    "9" if "dragon" in line else "1"
                    for line in prompt.split("<|im_start|>user\n")[1].splitlines()[:n]
                )
            self.turn_prompts.append(prompt)
            return self.turn_text

        super().__init__(handler, **kw)


def memories_section(prompt: str) -> str:
    m = re.search(r"===Your Memories===\n(.*?)(?:\n\n===|<\|im_end\|>)", prompt, re.S)
    return m.group(1) if m else ""


# -- BM25 and the store --------------------------------------------------------------------------


def test_bm25_scores_match_bm25s_lucene():
    docs = [
        "the traveler saved my daughter from the river",
        "the gate stays shut at night",
        "a coin for the ferryman at the river gate",
        "my daughter loves the river and the river loves her",
        "guards at the gate",
        "the duke died at noon",
    ]
    index = BM25()
    for i, d in enumerate(docs):
        index.add(i, tokenize(d))
    scores = index.scores(tokenize("daughter river gate"))
    # bm25s 0.3.16, BM25(method="lucene", k1=1.5, b=0.75) on the same tokens.
    expected = [0.662024, 0.266362, 0.532724, 0.708565, 0.348554, 0.0]
    assert [round(scores.get(i, 0.0), 6) for i in range(6)] == expected
    index.remove(3)
    assert 3 not in index.scores(["daughter"]) and len(index) == 5


def test_tokenize_drops_function_words_and_plurals():
    assert tokenize("The KEYS of the gate, and what is it?") == ["key", "gate"]


def test_importance_heuristics_rank_weighty_lines_higher():
    mundane = rate_importance("Nice weather today.", name="Mara")
    weighty = rate_importance("Mara, the traveler saved your daughter from the river!", name="Mara")
    assert 1 <= mundane < weighty <= 10


def test_store_recalls_by_relevance_importance_and_recency():
    store = MemoryStore()
    store.add("The baker sells bread at dawn.", importance=2)
    old = store.add("The dragon burned the mill.", importance=9)
    for i in range(50):
        store.add(f"filler line {i}", importance=2)
    new = store.add("A dragon was seen near the mill.", importance=3)
    got = store.recall("what about the dragon?", k=2)
    assert {m.text for m in got} == {old.text, new.text}
    assert store.recall("nothing shared here", k=3) == []
    assert store.recall("dragon", k=5, exclude={old.text}) == [new]


def test_store_forgets_the_least_important_past_capacity():
    store = MemoryStore(capacity=3)
    store.add("the key is under the stone", importance=9)
    for i in range(5):
        store.add(f"idle chatter {i}", importance=1)
    assert len(store) == 3
    assert "the key is under the stone" in [m.text for m in store.items]


def test_store_validates_its_input():
    with pytest.raises(ConfigError):
        MemoryStore(capacity=0)
    with pytest.raises(ConfigError):
        MemoryStore().add("x", importance=11)
    with pytest.raises(ConfigError):
        MemoryStore().add("   ")


def test_an_embedder_makes_meaning_count():
    # A toy embedder that knows "blade" and "sword" mean the same thing: BM25 alone cannot.
    axes = ["sword|blade", "bread|loaf"]

    def embed(texts):
        return [[1.0 if re.search(a, t.lower()) else 0.0 for a in axes] for t in texts]

    plain = MemoryStore()
    meaning = MemoryStore(embedder=embed)
    for store in (plain, meaning):
        store.add("Her father's sword hangs above the hearth.")
        store.add("The loaf was burned.")
    assert plain.recall("Where is the blade?") == []
    assert [m.text for m in meaning.recall("Where is the blade?")] == [
        "Her father's sword hangs above the hearth."
    ]


def test_a_broken_embedder_is_a_clear_error():
    store = MemoryStore(embedder=lambda texts: [[1.0]])
    store.add("one memory")
    with pytest.raises(ConfigError, match="embedder returned 1 vectors for 2 texts"):
        store.recall("one")


# -- characters ---------------------------------------------------------------------------------


def test_planted_memory_survives_a_save_and_is_recalled_only_when_relevant(tmp_path):
    # Play session 1: the game plants a fact, then the player chats about other things.
    mara = Character(name="Mara", profile="Gate captain.", model=Model())
    scene = Scene([mara], player="Traveler")
    mara.remember("The traveler saved my daughter Liss from the river.", importance=9)
    scene.say("Traveler", "Good evening, captain.")
    scene.turn("Mara")
    scene.save(tmp_path / "week1.json")

    # Play session 2, a week later: a new process, a new model.
    model = Model()
    scene = Scene.load(tmp_path / "week1.json", model=model)
    scene.say("Traveler", "Are the roads safe for merchants?")
    scene.turn("Mara")
    assert "saved my daughter" not in model.turn_prompts[-1]  # irrelevant: not recalled
    scene.say("Traveler", "How is your daughter doing since the river?")
    scene.turn("Mara")
    assert "The traveler saved my daughter Liss from the river." in memories_section(
        model.turn_prompts[-1]
    )


def test_old_events_come_back_from_long_term_memory():
    model = Model()
    mara = Character(name="Mara", model=model, max_memory=6, summarize=False)
    mara.hear("Jory", "I buried the silver chalice under the old oak.")
    for i in range(20):
        mara.hear("Traveler", f"small talk {i}")
    mara.hear("Traveler", "Have you seen a silver chalice?")
    mara.reply()
    section = memories_section(model.turn_prompts[-1])
    assert "Jory: I buried the silver chalice under the old oak." in section
    # What the prompt shows verbatim is not recalled a second time.
    assert "Have you seen a silver chalice?" not in section


def test_private_memories_never_reach_another_characters_prompt():
    mara_model, jory_model = (
        Model(
            turn="<system_thinking>PLAN-x</system_thinking>Mara: "
            "<role_thinking>SECRET-THOUGHT the chalice is mine</role_thinking>No chalice here."
        ),
        Model(turn="Jory: Sure."),
    )
    mara = Character(name="Mara", model=mara_model, max_memory=4, summarize=False)
    jory = Character(name="Jory", model=jory_model, max_memory=4, summarize=False)
    scene = Scene([mara, jory], player="Traveler")
    scene.say("Traveler", "Where is the chalice?")
    scene.turn("Mara")
    mara_model.turn_text = "Mara: No idea."
    for i in range(5):
        scene.say("Traveler", f"chalice question {i}")
        scene.turn("Mara")
        scene.turn("Jory")
    assert any("SECRET-THOUGHT" in m.text and m.private for m in mara.long_term.items)
    assert not any("SECRET-THOUGHT" in m.text for m in jory.long_term.items)
    assert all("SECRET-THOUGHT" not in p for p in jory_model.prompts)
    # Mara's recall brings her thought back from long-term memory, into her prompt only.
    assert "SECRET-THOUGHT" in memories_section(mara_model.turn_prompts[-1])


def test_overflow_folds_the_oldest_events_into_one_summary_call():
    model = Model(n_ctx=1200)
    mara = Character(name="Mara", profile="PERSONA-KEEP gate captain", model=model)
    jory_model = Model(turn="Jory: Aye.", n_ctx=1200)
    jory = Character(name="Jory", model=jory_model)
    scene = Scene([mara, jory], player="P")
    for i in range(120):
        scene.say("P", f"message number {i} with some padding words")
        if i % 10 == 9:
            scene.turn("Mara")
    folds = len(model.summary_calls)
    assert 1 <= folds <= 6  # one call per fold, far fewer than the 12 turns
    prompt = model.turn_prompts[-1]
    assert model.count_tokens(prompt) <= 1200
    assert "PERSONA-KEEP" in prompt and "message number 119" in prompt
    assert f"===What Happened Before===\nSUMMARY-1 #{folds}" in prompt
    assert "no longer remembered" not in prompt
    # The summary was asked of Mara's own model, from her point of view, about the oldest events.
    first = model.summary_calls[0]
    assert "You are Mara." in first and "message number 0 " in first
    assert mara.summary == f"SUMMARY-1 #{folds}"
    # A turn that does not overflow makes no summary call.
    scene.say("P", "one more")
    scene.turn("Mara")
    assert len(model.summary_calls) == folds
    # The summary is Mara's alone.
    assert all("SUMMARY-1" not in p for p in jory_model.prompts)


def test_memory_dropped_by_max_memory_is_folded_before_the_next_turn_and_saved():
    model = Model()
    mara = Character(name="Mara", model=model, max_memory=10)
    for i in range(25):
        mara.hear("P", f"line {i}")
    assert len(mara.memory) == 10
    restored = Character.loads(mara.dumps(), model=model)  # waiting folds are saved
    restored.reply()
    # At most max_memory items wait for a fold (older ones stay in long-term memory only).
    assert len(model.summary_calls) == 1 and "P: line 5\n" in model.summary_calls[0]
    assert "P: line 4\n" not in model.summary_calls[0]
    assert "P: line 14" in model.summary_calls[0] and "P: line 15" not in model.summary_calls[0]
    again = Character.loads(restored.dumps(), model=model)
    assert again.summary == "SUMMARY-1 #1" and again.long_term.items == restored.long_term.items


def test_the_model_rates_importance_when_asked_in_one_call_per_turn():
    model = Model()
    mara = Character(name="Mara", model=model, rate_importance="model")
    mara.hear("P", "The weather is fine.")
    mara.hear("P", "A dragon burned the mill!")
    mara.reply()
    assert len(model.rating_calls) == 1
    by_text = {m.text: m.importance for m in mara.long_term.items}
    assert by_text["P: The weather is fine."] == 1
    assert by_text["P: A dragon burned the mill!"] == 9
    mara.reply()  # only its own turn is new: one more call, for that one memory
    assert len(model.rating_calls) == 2


def test_remember_rejects_bad_input():
    mara = Character(name="Mara")
    with pytest.raises(ConfigError):
        mara.remember("")
    with pytest.raises(ConfigError):
        mara.remember("fact", importance=0)
    with pytest.raises(ConfigError):
        Character(name="Mara", recall=-1)
    with pytest.raises(ConfigError):
        Character(name="Mara", rate_importance="dice")  # type: ignore[arg-type]


def test_recall_can_be_turned_off():
    model = Model()
    mara = Character(name="Mara", model=model, recall=0)
    mara.remember("The dragon sleeps under the hill.", importance=10)
    mara.hear("P", "Tell me of the dragon.")
    mara.reply()
    assert "===Your Memories===" not in model.turn_prompts[-1]


def test_an_embedder_serves_a_loaded_scene():
    calls = []

    def embed(texts):
        calls.append(len(texts))
        return [[1.0 if "blade" in t.lower() or "sword" in t.lower() else 0.0, 1.0] for t in texts]

    model = Model()
    mara = Character(name="Mara", model=model, recall=2)
    scene = Scene([mara], player="P")
    mara.remember("My father's sword hangs above the hearth.")
    data = scene.dumps()
    restored = Scene.loads(data, model=model, embedder=embed)
    restored.say("P", "Show me the blade.")
    restored.turn("Mara")
    assert calls and "father's sword" in memories_section(model.turn_prompts[-1])
