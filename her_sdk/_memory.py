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

The lexical index (tokenizer and incremental BM25) is `_bm25`.

A recall's work does not grow with the length of the game. The index keeps postings, document
frequencies and lengths as memories come and go, and the store files its memories by recency and
by importance; a recall scores every memory sharing a term with the query while those are few
(exactly what scoring the whole store gives), and past a budget a bounded set chosen from the
postings and the files (see `MemoryStore`). The index is rebuilt when a save is loaded: save files
hold the memories only.

Privacy holds by construction: a store belongs to one character and is rendered only into that
character's prompt. `MemoryItem.private` marks items that hold its own thoughts, for views that
show memories to someone else (a debug tool, a server client).

This module does not render prompts (that is `her_sdk.format`) nor call a model (`_upkeep` does,
for importance ratings and summaries).
"""

from __future__ import annotations

import heapq
import math
import re
import threading
import weakref
from bisect import bisect_left, insort
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from itertools import chain, compress, filterfalse, islice, repeat, tee
from operator import eq, gt, not_
from typing import Any, Literal

import msgspec

from ._bm25 import BM25, tokenize
from ._errors import ConfigError

__all__ = ["Embedder", "MemoryItem", "MemoryStore", "rate_importance"]

# Turns texts into vectors, one per text (e.g. a sentence-embedding model). Characters use it,
# when given one, for the relevance part of recall.
Embedder = Callable[[Sequence[str]], Sequence[Sequence[float]]]

MemoryKind = Literal["perceived", "own", "planted"]


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

    def __setattr__(self, name: str, value: Any) -> None:
        held = _HELD.get(id(self)) if name in _FILED_BY else None
        if held is not None and name == "text" and isinstance(value, str):
            value = " ".join(value.split())  # as the store keeps every text it holds
        _struct_setattr(self, name, value)
        if held is not None:  # a store holds it: tell the store to refile it
            held[0].append(held[1])


_struct_setattr = msgspec.Struct.__setattr__
# A store files its items by these fields. Games and the SDK may set them on an item a store
# holds (a model rating comes a turn after the memory formed): the store refiles it then.
_FILED_BY = frozenset(["text", "importance", "last_recalled"])
# id(item) -> (the edits list of the store holding it, its key there). A store holds its own
# copies, so an item has at most one; the store removes its entries when it lets an item go or
# is itself collected.
_HELD: dict[int, tuple[list[int], int]] = {}


def _let_go(items: dict[int, MemoryItem], edits: list[int]) -> None:
    for item in items.values():
        held = _HELD.get(id(item))
        if held is not None and held[0] is edits:
            del _HELD[id(item)]


# A recall scores every memory sharing a term with the query while their postings number at most
# _EXACT * candidates; past that, it reads at most _COUNTED * candidates postings (counting, in C)
# and scores about 1.25 * candidates memories.
_EXACT = 8
_COSTS = ("postings", "counted", "walked", "scored")
_COUNTED = 32


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


# Runs of whitespace as one space, as texts are stored; a recall leaves out the same working
# memory's texts turn after turn, so each is squashed once.
_squash = lru_cache(maxsize=8192)(lambda text: " ".join(text.split()))


def _scale(values: dict[int, float]) -> dict[int, float]:
    """Min-max scale to [0, 1]; all-equal values become 1 (they tie, and are present)."""
    if not values:
        return {}
    lo, hi = min(values.values()), max(values.values())
    if hi - lo < 1e-12:
        return {k: 1.0 for k in values}
    return {k: (v - lo) / (hi - lo) for k, v in values.items()}


def _scaled(values: list[float]) -> list[float]:
    """`_scale` of a list: the same floats."""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        return [1.0] * len(values)
    return [(v - lo) / (hi - lo) for v in values]


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

    `candidates` bounds the work of one recall, so that it does not grow with the length of the
    game. While the postings of the query's terms number at most 8 x `candidates` (in a game's
    first few hundred memories, always), a recall scores every memory sharing a term with the
    query, exactly as the store always did. Past that, it scores about 1.25 x `candidates`
    memories: those of the query's rarest terms (up to half a budget of postings), those holding
    the most of its next terms (counted over at most 32 budgets of postings, in C), the most
    recently formed or recalled and the most important sharing a term, and the oldest and the
    least important of those (so that recency and importance are scaled over the same range as
    over the whole store). On a long game that returns the same memories as scoring everything in
    the large majority of turns (benchmarks/long_session.py reports how often); the others differ
    where a memory outside the set would have ranked. `candidates=None` always scores everything
    (work that grows with the store). `recall_cost` counts the work of the last recall. With an
    embedder, every memory is compared with the query by meaning, whatever `candidates` says.

    The store keeps its own copies of the items given to it. Setting `importance`,
    `last_recalled` or `text` on an item it holds refiles the item (`MemoryItem.__setattr__`);
    a text set so is kept with runs of whitespace as one space, as `add` keeps it.
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
        candidates: int | None = 256,
    ) -> None:
        if capacity < 1:
            raise ConfigError("memory capacity must be >= 1")
        if not 0 < decay <= 1:
            raise ConfigError("memory decay must be in (0, 1]")
        if len(weights) != 3 or any(w < 0 for w in weights):
            raise ConfigError("memory weights are three non-negative numbers")
        if candidates is not None and (not isinstance(candidates, int) or candidates < 16):
            raise ConfigError("memory candidates must be a whole number >= 16, or None")
        self.capacity = capacity
        self.decay = decay
        self.weights = weights
        self.embedder = embedder
        self.min_cosine = min_cosine
        self.candidates = candidates
        self._items: dict[int, MemoryItem] = {}  # by key: the order in which they were stored
        self._index = BM25()
        self._vectors: dict[int, Sequence[float]] = {}
        self._by_text: dict[str, dict[int, None]] = {}  # text -> the keys of items holding it
        self._next_id = 0
        self._lock = threading.RLock()
        self.clock = 0  # memories formed so far: the store's notion of time
        # The files: keys by recency, least recently formed or recalled first (ties: oldest key
        # first), over all items and per importance; the (importance, last_recalled, text) each
        # is filed under; the keys of items edited directly since (see MemoryItem.__setattr__).
        self._recent: dict[int, None] = {}
        self._levels: dict[float, dict[int, None]] = {}
        self._level_order: list[float] = []  # the importances that have items, ascending
        self._filed: dict[int, tuple[float, int, str]] = {}
        self._edits: list[int] = []
        weakref.finalize(self, _let_go, self._items, self._edits)
        self.recall_cost: dict[str, int] = dict.fromkeys(_COSTS, 0)
        for item in items:
            self._insert(msgspec.structs.replace(item), file=False)
            self.clock = max(self.clock, item.tick + 1)
        for key in sorted(self._items, key=lambda k: (self._items[k].last_recalled, k)):
            self._file(key)

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
            candidates=self.candidates,
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

    # -- the files ------------------------------------------------------------------------------

    def _insert(self, item: MemoryItem, file: bool = True) -> int:
        key = self._next_id
        self._next_id += 1
        self._items[key] = item
        self._by_text.setdefault(item.text, {})[key] = None
        _HELD[id(item)] = (self._edits, key)
        self._index.add(key, tokenize(item.text))
        if file:
            self._file(key)
        return key

    def _file(self, key: int) -> None:
        it = self._items[key]
        importance = float(it.importance)
        self._filed[key] = (importance, it.last_recalled, it.text)
        self._place(self._recent, key)
        level = self._levels.get(importance)
        if level is None:
            level = self._levels[importance] = {}
            insort(self._level_order, importance)
        self._place(level, key)

    def _unfile(self, key: int) -> None:
        importance = self._filed.pop(key)[0]
        del self._recent[key]
        level = self._levels[importance]
        del level[key]
        if not level:
            del self._levels[importance]
            del self._level_order[bisect_left(self._level_order, importance)]

    def _place(self, order: dict[int, None], key: int) -> None:
        """Put `key` into `order` (keys by (last_recalled, key)). New and just-recalled items go
        last at once; an item edited to an older recency moves the newer ones behind it."""
        filed = self._filed
        at = (filed[key][1], key)
        newer: list[int] = []
        while order:
            last = next(reversed(order))
            if (filed[last][1], last) <= at:
                break
            del order[last]
            newer.append(last)
        order[key] = None
        for k in reversed(newer):
            order[k] = None

    def _sync(self) -> None:
        """Refile the items edited directly since the last look."""
        if not self._edits:
            return
        edited = self._edits[:]
        del self._edits[: len(edited)]  # not `clear`: another thread may have added one
        for key in dict.fromkeys(edited):
            item = self._items.get(key)
            if item is None:
                continue  # forgotten since
            filed = self._filed[key]
            if filed == (item.importance, item.last_recalled, item.text):
                continue
            if filed[2] != item.text:
                self._unlist(key, filed[2])
                self._by_text.setdefault(item.text, {})[key] = None
                self._index.add(key, tokenize(item.text))
                self._vectors.pop(key, None)
            self._unfile(key)
            self._file(key)

    def _forget_one(self) -> None:
        """Forget the item of least `importance / 10 + decay ** age`.

        Within an importance, that is the least recently recalled item (on a tie, the oldest);
        across importances, the least value (on a tie, the oldest). Items whose recency no
        longer changes the sum in floating point (about 3,900 memories back at decay 0.99) tie:
        of those, the least recently recalled goes.
        """
        self._sync()
        clock, decay, filed = self.clock, self.decay, self._filed
        victim: tuple[float, int] | None = None
        for importance, level in self._levels.items():
            head = next(iter(level))
            value = importance / 10 + decay ** (clock - filed[head][1])
            if victim is None or (value, head) < victim:
                victim = (value, head)
        assert victim is not None
        self._remove(victim[1])

    def _unlist(self, key: int, text: str) -> None:
        keys = self._by_text[text]
        del keys[key]
        if not keys:
            del self._by_text[text]

    def _remove(self, key: int) -> None:
        self._unlist(key, self._filed[key][2])
        self._unfile(key)
        item = self._items.pop(key)
        _HELD.pop(id(item), None)
        self._index.remove(key)
        self._vectors.pop(key, None)

    # -- recall ---------------------------------------------------------------------------------

    def recall(
        self,
        query: str,
        *,
        k: int = 5,
        exclude: Iterable[str] = (),
        touch: bool = True,
    ) -> list[MemoryItem]:
        """The `k` best memories for `query`, best first.

        Items whose text is in `exclude` are left out (the prompt shows them already; texts are
        compared as stored, with runs of whitespace as one space). `touch` marks the returned
        items as recalled now, which makes them recent again.
        """
        with self._lock:
            return self._recall(query, k, exclude, touch)

    def _recall(self, query: str, k: int, exclude: Iterable[str], touch: bool) -> list[MemoryItem]:
        self.recall_cost = dict.fromkeys(_COSTS, 0)
        if k < 1 or not self._items:
            return []
        self._sync()
        # The items to leave out, by key: a recall may look at hundreds of items.
        by_text = self._by_text
        excluded: set[int] = set()
        for text in set(map(_squash, exclude)):
            if text in by_text:
                excluded.update(by_text[text])
        if self.embedder is None:
            relevance = self._relevance(query, excluded)
        else:
            relevance = self._relevance_by_meaning(query, excluded)
        if not relevance:
            return []
        self.recall_cost["scored"] = len(relevance)
        best = self._best(relevance, k)
        if touch:
            self._touch(best)
        return [self._items[i] for i in best]

    def _best(self, relevance: dict[int, float], k: int) -> list[int]:
        """The keys of the `k` best candidates, each scaled to [0, 1] over the candidates."""
        now, decay, items = self.clock, self.decay, self._items
        wr, wi, wv = self.weights
        keys = list(relevance)
        held = [items[i] for i in keys]
        rec = _scaled([decay ** (now - it.last_recalled) for it in held])
        imp = _scaled([it.importance for it in held])
        rel = _scaled(list(relevance.values()))
        score = [wr * a + wi * b + wv * c for a, b, c in zip(rec, imp, rel, strict=True)]
        # best by (score, key): the newer memory wins a tie; tuples compare in C
        return [key for _, key in heapq.nlargest(k, zip(score, keys, strict=True))]

    def _touch(self, keys: list[int]) -> None:
        now = self.clock
        for key in sorted(keys):  # equal recency: the older key first, as `_place` keeps them
            _struct_setattr(self._items[key], "last_recalled", now)
            self._unfile(key)
            self._file(key)

    def _relevance(self, query: str, excluded: set[int]) -> dict[int, float]:
        index = self._index
        tokens = tokenize(query)
        terms = [t for t in dict.fromkeys(tokens) if index.df(t)]
        postings = sum(index.df(t) for t in terms)
        if self.candidates is None or postings <= _EXACT * self.candidates:
            self.recall_cost["postings"] = postings
            return {i: s for i, s in index.scores(tokens).items() if i not in excluded}
        return index.score_docs(tokens, self._candidates(terms, excluded, self.candidates))

    def _candidates(self, terms: list[str], excluded: set[int], budget: int) -> list[int]:
        """A bounded set of memories sharing a term with the query (see the class docstring)."""
        index, docs = self._index, self._index._docs
        query = set(terms)
        found: dict[int, None] = {}
        cost = self.recall_cost

        def walk(keys: Iterable[int], want: int, limit: int) -> None:
            """Take the first `want` of the first `limit` `keys` not yet found, not excluded
            and sharing a term with the query. The filters run in C: the recency walk passes
            the whole working memory (excluded) before it finds anything."""
            window = list(islice(keys, limit))
            fresh = filterfalse(found.__contains__, filterfalse(excluded.__contains__, window))
            keys_of, terms_of = tee(fresh)
            shares = map(not_, map(query.isdisjoint, map(docs.__getitem__, terms_of)))
            taken = list(islice(compress(keys_of, shares), want))
            # what a loop over the keys would have looked at: up to the last taken, or all
            full = len(taken) == want > 0
            cost["walked"] += window.index(taken[-1]) + 1 if full else len(window)
            found.update(dict.fromkeys(taken))

        # The rarest terms' memories, whole: the most relevant by BM25 hold rare terms.
        order = sorted(terms, key=index.df, reverse=True)  # stable: ties in query order
        spent = 0
        while order and spent + index.df(order[-1]) <= budget // 2:
            term = order.pop()
            spent += index.df(term)
            found.update(dict.fromkeys(index.postings(term)))
        cost["postings"] = spent
        for key in excluded.intersection(found):
            del found[key]
        # Then, of the next terms' memories, those holding the most of them (counted in C, at
        # the cost of reading the postings): many shared middling terms make a relevant memory.
        hits: Counter[int] = Counter()
        while order and cost["counted"] + index.df(order[-1]) <= _COUNTED * budget:
            postings = index.postings(order.pop())
            cost["counted"] += len(postings)
            hits.update(iter(postings))
        if hits:
            want, enough, least = budget // 4, 0, 1
            for n, docs_with_n in sorted(Counter(hits.values()).items(), reverse=True):
                enough, least = enough + docs_with_n, n
                if enough >= want:
                    break
            # By count, ties the most recent first. Thousands of memories may hold `least`
            # of the terms: they are picked in C and sorted by key alone.
            best = list(compress(hits, map(gt, hits.values(), repeat(least))))
            best.sort(reverse=True)
            best.sort(key=hits.__getitem__, reverse=True)  # stable: ties stay newest first
            at_least = list(compress(hits, map(eq, hits.values(), repeat(least))))
            at_least.sort(reverse=True)
            walk(chain(best, at_least), want, budget)
        # The most recent, the most important, then the least of each (the scales' low ends).
        walk(reversed(self._recent), budget // 4, budget)
        levels = self._levels
        by_level = map(levels.__getitem__, reversed(self._level_order))
        walk(chain.from_iterable(map(reversed, by_level)), budget // 4, budget)
        walk(iter(self._recent), 1, budget // 4)
        walk(chain.from_iterable(map(levels.__getitem__, self._level_order)), 1, budget // 4)
        return list(found)

    def _relevance_by_meaning(self, query: str, excluded: set[int]) -> dict[int, float]:
        assert self.embedder is not None
        bm25 = {i: s for i, s in self._index.scores(tokenize(query)).items() if i not in excluded}
        ids = [i for i in self._items if i not in excluded]
        cos = self._cosines(query, ids)
        lexical = _scale(bm25) if bm25 else {}
        out: dict[int, float] = {}
        for i in ids:
            c = cos.get(i, 0.0)
            if i in lexical or c >= self.min_cosine:
                out[i] = (lexical.get(i, 0.0) + max(c, 0.0)) / 2
        self.recall_cost["postings"] = sum(self._index.df(t) for t in set(tokenize(query)))
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
