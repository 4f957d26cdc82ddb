"""Long-term memory: what one character remembers, and which of it comes back before a turn.

Each `Character` owns one `MemoryStore`. Every perception and every own turn goes in as a
`MemoryItem`; so do facts the game plants (`Character.remember`). Before a turn the character
recalls the few items that matter most right now into its prompt, scored as in Generative
Agents (Park et al., 2023): recency + importance + relevance, each scaled to [0, 1] over the
candidates.

- recency: `decay ** (now - last_recalled)`, where time is the character's own count of
  memories formed (games have no common clock; a memory that was just recalled counts as fresh);
- importance: 1-10, rated when the memory forms: by `rate_importance` (cheap heuristics), by the
  caller, or by the model when the character is asked to (`Character(rate_importance="model")`);
- relevance: BM25 between the item and what just happened, and, when the character has an
  embedder, the cosine of the two embeddings averaged in. Only items that share something with
  the query (a BM25 term or, with embeddings, a cosine above `min_cosine`) are candidates: an
  important but unrelated memory does not crowd the prompt.

Why BM25 is written here rather than taken from `bm25s`: a memory store grows by one item at a
time and is queried after every few additions, so it needs an incremental inverted index;
`bm25s` builds a static sparse-matrix index (re-indexed on every change) and would add numpy to
the core install, which needs only msgspec. A store of a few thousand short memories is scored
here in well under a millisecond. The scoring is BM25 as Lucene computes it, the variant `bm25s`
calls "lucene", and gives the same scores.

Privacy holds by construction: a store belongs to one character and is rendered only into that
character's prompt. `MemoryItem.private` marks items that hold its own thoughts, for views that
show memories to someone else (a debug tool, a server client).

This module does not render prompts (that is `her_sdk.format`) nor call a model (the character
does, for importance ratings and summaries).
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from collections.abc import Callable, Container, Iterable, Sequence
from typing import Literal

import msgspec

from ._errors import ConfigError

__all__ = [
    "BM25",
    "Embedder",
    "MemoryItem",
    "MemoryStore",
    "rate_importance",
    "tokenize",
]

# Turns texts into vectors, one per text (e.g. a sentence-embedding model). Characters use it,
# when given one, for the relevance part of recall.
Embedder = Callable[[Sequence[str]], Sequence[Sequence[float]]]

MemoryKind = Literal["perceived", "own", "planted"]

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
# Function words carry no relevance; dropping them keeps "what is it" from matching everything.
_STOP = frozenset(
    [
        "a", "about", "after", "again", "all", "also", "am", "an", "and", "any", "are", "as",
        "at", "be", "been", "before", "being", "but", "by", "can", "could", "did", "do", "does",
        "doing", "for", "from", "had", "has", "have", "having", "he", "her", "here", "hers",
        "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "me",
        "more", "most", "my", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or",
        "other", "our", "ours", "out", "over", "own", "same", "she", "should", "so", "some",
        "such", "than", "that", "the", "their", "theirs", "them", "then", "there", "these",
        "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was",
        "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will",
        "with", "would", "you", "your", "yours", "yourself",
    ]
)  # fmt: skip


def tokenize(text: str) -> list[str]:
    """Lower-cased words without function words; a plural 's' is dropped ("keys" -> "key")."""
    out = []
    for w in _WORD.findall(text.lower()):
        if w in _STOP:
            continue
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.append(w)
    return out


class BM25:
    """An incremental Okapi BM25 index over documents keyed by int ids.

    IDF is Lucene's `log(1 + (N - df + 0.5) / (df + 0.5))`, which is never negative, so a term
    that occurs in most documents still counts a little instead of counting against; the term
    weight is Lucene's `tf / (tf + k1 * (1 - b + b * len / avg_len))`. Scores equal those of
    `bm25s.BM25(method="lucene")` (checked against bm25s 0.3.16).
    """

    def __init__(self, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b
        self._docs: dict[int, Counter[str]] = {}
        self._lengths: dict[int, int] = {}
        self._postings: dict[str, set[int]] = {}
        self._total = 0

    def __len__(self) -> int:
        return len(self._docs)

    def add(self, doc_id: int, tokens: Iterable[str]) -> None:
        if doc_id in self._docs:
            self.remove(doc_id)
        tf = Counter(tokens)
        self._docs[doc_id] = tf
        n = sum(tf.values())
        self._lengths[doc_id] = n
        self._total += n
        for term in tf:
            self._postings.setdefault(term, set()).add(doc_id)

    def remove(self, doc_id: int) -> None:
        tf = self._docs.pop(doc_id, None)
        if tf is None:
            return
        self._total -= self._lengths.pop(doc_id)
        for term in tf:
            ids = self._postings[term]
            ids.discard(doc_id)
            if not ids:
                del self._postings[term]

    def idf(self, term: str) -> float:
        n = len(self._docs)
        df = len(self._postings.get(term, ()))
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    def scores(self, query: Iterable[str]) -> dict[int, float]:
        """BM25 score of every document sharing a term with `query` (others score 0)."""
        if not self._docs:
            return {}
        avg = self._total / len(self._docs) or 1.0
        out: dict[int, float] = {}
        for term, qtf in Counter(query).items():
            ids = self._postings.get(term)
            if not ids:
                continue
            idf = self.idf(term)
            for d in ids:
                f = self._docs[d][term]
                norm = f + self.k1 * (1 - self.b + self.b * self._lengths[d] / avg)
                out[d] = out.get(d, 0.0) + qtf * idf * f / norm
        return out


class MemoryItem(msgspec.Struct, kw_only=True):
    """One memory: `text` as the character would recall it, first person where it is its own.

    `tick` is when it formed and `last_recalled` when it last came back, both on the character's
    own count of memories formed. `kind`: "perceived" (what it saw and heard), "own" (its own
    turn, thoughts included), "planted" (a fact the game gave it). `private` marks items holding
    its own thoughts.
    """

    text: str
    importance: float = 3.0
    tick: int = 0
    last_recalled: int = 0
    kind: MemoryKind = "perceived"
    private: bool = False


# Words that mark an event as weighty: harm, loss, love, debts, promises, family, power.
_WEIGHTY = frozenset(
    tokenize(
        """kill killed murder die died dead death blood wound hurt attack fight war betray betrayed
        lie lied secret promise swore swear oath vow love loved hate marry married child daughter
        son mother father wife husband brother sister family king queen lord duke crown gold debt
        owe stole steal thief save saved rescue rescued help forgive sorry thank grateful danger
        threat escape prison gate key treasure poison curse fire"""
    )
)


def rate_importance(text: str, *, name: str = "", own: bool = False) -> float:
    """A cheap 1-10 rating of how much `text` matters to character `name`.

    Mundane lines rate 2-3; lines addressing the character, with weighty words (death, debts,
    family, promises...), questions or exclamations rate higher. Planting a fact with an explicit
    importance, or asking the model to rate (`Character(rate_importance="model")`), overrides it.
    """
    words = tokenize(text)
    score = 2.0
    weighty = sum(1 for w in words if w in _WEIGHTY)
    if weighty:
        score += 2 + min(weighty - 1, 3)
    if name and re.search(rf"\b{re.escape(name.lower())}\b", text.lower()):
        score += 1.5
    if "?" in text:
        score += 0.5
    if "!" in text:
        score += 1
    if len(text) > 160:
        score += 1
    if own:
        score += 0.5
    return float(min(max(score, 1.0), 10.0))


def _scale(values: dict[int, float]) -> dict[int, float]:
    """Min-max scale to [0, 1]; all-equal values become 1 (they tie, and are present)."""
    if not values:
        return {}
    lo, hi = min(values.values()), max(values.values())
    if hi - lo < 1e-12:
        return {k: 1.0 for k in values}
    return {k: (v - lo) / (hi - lo) for k, v in values.items()}


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


class MemoryStore:
    """A character's long-term memory: add items, recall the best few for a query.

    `capacity` bounds the store: past it, the item with the lowest importance-and-recency is
    forgotten (planted facts last longest, being rated by the game). `decay` is the recency
    factor per memory formed; `weights` weigh (recency, importance, relevance). Thread-safe: a
    scene may deliver a perception while the character recalls for its turn.
    """

    def __init__(
        self,
        items: Iterable[MemoryItem] = (),
        *,
        capacity: int = 5000,
        decay: float = 0.99,
        weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
        embedder: Embedder | None = None,
        min_cosine: float = 0.3,
    ) -> None:
        if capacity < 1:
            raise ConfigError("memory capacity must be >= 1")
        if not 0 < decay <= 1:
            raise ConfigError("memory decay must be in (0, 1]")
        if len(weights) != 3 or any(w < 0 for w in weights):
            raise ConfigError("memory weights are three non-negative numbers")
        self.capacity = capacity
        self.decay = decay
        self.weights = weights
        self.embedder = embedder
        self.min_cosine = min_cosine
        self._items: dict[int, MemoryItem] = {}
        self._index = BM25()
        self._vectors: dict[int, Sequence[float]] = {}
        self._next_id = 0
        self._lock = threading.RLock()
        self.clock = 0  # memories formed so far: the store's notion of time
        for item in items:
            self._insert(item)
            self.clock = max(self.clock, item.tick + 1)

    def __len__(self) -> int:
        return len(self._items)

    def __deepcopy__(self, memo: dict) -> MemoryStore:
        return MemoryStore(
            [msgspec.structs.replace(i) for i in self.items],
            capacity=self.capacity,
            decay=self.decay,
            weights=self.weights,
            embedder=self.embedder,
            min_cosine=self.min_cosine,
        )

    @property
    def items(self) -> list[MemoryItem]:
        """All items, oldest first."""
        with self._lock:
            return list(self._items.values())

    def add(
        self,
        text: str,
        *,
        importance: float | None = None,
        kind: MemoryKind = "perceived",
        private: bool = False,
        name: str = "",
    ) -> MemoryItem:
        """Form a memory now. Without `importance`, `rate_importance` rates it."""
        text = " ".join(text.split())
        if not text:
            raise ConfigError("a memory needs some text")
        if importance is None:
            importance = rate_importance(text, name=name, own=kind == "own")
        elif not isinstance(importance, (int, float)) or not 1 <= importance <= 10:
            raise ConfigError(f"importance must be a number from 1 to 10, not {importance!r}")
        with self._lock:
            item = MemoryItem(
                text=text,
                importance=float(importance),
                tick=self.clock,
                last_recalled=self.clock,
                kind=kind,
                private=private,
            )
            self.clock += 1
            self._insert(item)
            while len(self._items) > self.capacity:
                self._forget_one()
            return item

    def _insert(self, item: MemoryItem) -> int:
        i = self._next_id
        self._next_id += 1
        self._items[i] = item
        self._index.add(i, tokenize(item.text))
        return i

    def _forget_one(self) -> None:
        def keep(i: int) -> float:
            it = self._items[i]
            return it.importance / 10 + self.decay ** (self.clock - it.last_recalled)

        victim = min(self._items, key=keep)
        del self._items[victim]
        self._index.remove(victim)
        self._vectors.pop(victim, None)

    def recall(
        self,
        query: str,
        *,
        k: int = 5,
        exclude: Container[str] = (),
        touch: bool = True,
    ) -> list[MemoryItem]:
        """The `k` best memories for `query`, best first.

        Items whose text is in `exclude` are left out (the prompt shows them already). `touch`
        marks the returned items as recalled now, which makes them recent again.
        """
        with self._lock:
            return self._recall(query, k, exclude, touch)

    def _recall(self, query: str, k: int, exclude: Container[str], touch: bool) -> list[MemoryItem]:
        if k < 1 or not self._items:
            return []
        relevance = self._relevance(query, exclude)
        if not relevance:
            return []
        now = self.clock
        wr, wi, wv = self.weights
        rec = _scale({i: self.decay ** (now - self._items[i].last_recalled) for i in relevance})
        imp = _scale({i: self._items[i].importance for i in relevance})
        rel = _scale(relevance)
        score = {i: wr * rec[i] + wi * imp[i] + wv * rel[i] for i in relevance}
        best = sorted(score, key=lambda i: (-score[i], -i))[:k]
        out = [self._items[i] for i in best]
        if touch:
            for it in out:
                it.last_recalled = now
        return out

    def _relevance(self, query: str, exclude: Container[str]) -> dict[int, float]:
        def eligible(i: int) -> bool:
            return self._items[i].text not in exclude

        bm25 = {i: s for i, s in self._index.scores(tokenize(query)).items() if eligible(i)}
        if self.embedder is None:
            return bm25
        ids = [i for i in self._items if eligible(i)]
        cos = self._cosines(query, ids)
        lexical = _scale(bm25) if bm25 else {}
        out: dict[int, float] = {}
        for i in ids:
            c = cos.get(i, 0.0)
            if i in lexical or c >= self.min_cosine:
                out[i] = (lexical.get(i, 0.0) + max(c, 0.0)) / 2
        return out

    def _cosines(self, query: str, ids: list[int]) -> dict[int, float]:
        assert self.embedder is not None
        missing = [i for i in ids if i not in self._vectors]
        texts = [query] + [self._items[i].text for i in missing]
        vectors = list(self.embedder(texts))
        if len(vectors) != len(texts):
            raise ConfigError(
                f"the embedder returned {len(vectors)} vectors for {len(texts)} texts"
            )
        for i, v in zip(missing, vectors[1:], strict=True):
            self._vectors[i] = v
        q = vectors[0]
        return {i: _cosine(q, self._vectors[i]) for i in ids}


# -- prompts of the model calls memory makes (a summary fold, importance ratings) -------------


def _transcript(lines: Sequence[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def summary_messages(
    name: str,
    sheet: str,
    summary: str,
    events: Sequence[str],
    *,
    max_words: int,
) -> list[tuple[str, str]]:
    """(role, content) messages asking the model for `name`'s running summary.

    `sheet` is the character's system prompt (who it is); `summary` what it remembered so far;
    `events` the lines to fold in, oldest first. The summary is the character's own, in the first
    person: it may hold its thoughts, as they stay in its own prompt.
    """
    ask = [
        f"You are {name}. Below is what you remember of the story so far, and what happened "
        "after it.",
    ]
    if summary:
        ask.append(f"What you remember so far:\n{summary}")
    ask.append(f"What happened after that:\n{_transcript(events)}")
    ask.append(
        f"Write, as {name} in the first person, one paragraph of at most {max_words} words that "
        "keeps everything worth remembering from both: who is who, what happened, what was "
        "promised or revealed, how you feel about the others. Plain text only."
    )
    return [("system", sheet), ("user", "\n\n".join(ask))]


def summary_grammar(max_chars: int) -> str:
    """GBNF of a plain paragraph (no markup, no line breaks) of at most `max_chars`."""
    return f"root ::= [^<\\n \\t] [^<\\n]{{0,{max_chars - 1}}}\n"


def rating_messages(name: str, texts: Sequence[str]) -> list[tuple[str, str]]:
    """(role, content) messages asking the model to rate each memory's importance 1-10."""
    lines = "\n".join(f"{i + 1}. {t}" for i, t in enumerate(texts))
    return [
        (
            "system",
            "You rate memories. On a scale of 1 to 10, where 1 is purely mundane (e.g. a "
            "greeting, the weather) and 10 is extremely poignant (e.g. a death, a betrayal, a "
            "life saved), rate how much each memory matters to "
            f"{name}. Answer with one number per line and nothing else.",
        ),
        ("user", lines),
    ]


def rating_grammar(n: int) -> str:
    """GBNF of `n` ratings, one per line."""
    return f'root ::= (rating "\\n"){{{n}}}\nrating ::= [1-9] | "10"\n'


def parse_ratings(text: str, n: int) -> list[float] | None:
    """The `n` ratings in the model's answer, or None when it did not give exactly `n`."""
    found = [float(m) for m in re.findall(r"\b(10|[1-9])\b", text)]
    return found[:n] if len(found) >= n else None
