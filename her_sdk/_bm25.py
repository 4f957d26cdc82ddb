"""The lexical index of a character's memory: a tokenizer and an incremental BM25.

Why BM25 is written here rather than taken from `bm25s`: a memory store grows by one item at a
time and is queried after every few additions, so it needs an incremental inverted index;
`bm25s` builds a static sparse-matrix index (re-indexed on every change) and would add numpy to
the core install, which needs only msgspec. The scoring is BM25 as Lucene computes it, the
variant `bm25s` calls "lucene", and gives the same scores.

This module knows nothing of memories, recency or importance: that is `_memory`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping

__all__ = ["BM25", "tokenize"]

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

    Postings map each term to its documents and their term frequencies; document frequencies,
    lengths and their total are kept as documents come and go, so scoring a query touches only
    the postings of its terms (`scores`), or only the documents asked about (`score_docs`).
    """

    def __init__(self, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b
        self._docs: dict[int, dict[str, int]] = {}  # doc -> its terms' frequencies
        self._lengths: dict[int, int] = {}
        self._postings: dict[str, dict[int, int]] = {}  # term -> {doc: frequency}
        self._total = 0

    def __len__(self) -> int:
        return len(self._docs)

    def add(self, doc_id: int, tokens: Iterable[str]) -> None:
        if doc_id in self._docs:
            self.remove(doc_id)
        tf: dict[str, int] = {}
        for t in tokens:
            tf[t] = tf.get(t, 0) + 1
        self._docs[doc_id] = tf
        n = sum(tf.values())
        self._lengths[doc_id] = n
        self._total += n
        for term, f in tf.items():
            self._postings.setdefault(term, {})[doc_id] = f

    def remove(self, doc_id: int) -> None:
        tf = self._docs.pop(doc_id, None)
        if tf is None:
            return
        self._total -= self._lengths.pop(doc_id)
        for term in tf:
            ids = self._postings[term]
            del ids[doc_id]
            if not ids:
                del self._postings[term]

    def df(self, term: str) -> int:
        """How many documents hold `term`."""
        return len(self._postings.get(term, ()))

    def idf(self, term: str) -> float:
        n = len(self._docs)
        df = len(self._postings.get(term, ()))
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    def terms(self, doc_id: int) -> Mapping[str, int]:
        """The terms of a document and their frequencies (a view: do not change it)."""
        return self._docs[doc_id]

    def postings(self, term: str) -> Mapping[int, int]:
        """The documents holding `term` and its frequency there (a view: do not change it)."""
        return self._postings.get(term, {})

    def scores(self, query: Iterable[str]) -> dict[int, float]:
        """BM25 score of every document sharing a term with `query` (others score 0)."""
        if not self._docs:
            return {}
        avg = self._total / len(self._docs) or 1.0
        k1, b, lengths = self.k1, self.b, self._lengths
        out: dict[int, float] = {}
        for term, qtf in Counter(query).items():
            ids = self._postings.get(term)
            if not ids:
                continue
            w = qtf * self.idf(term)
            for d, f in ids.items():
                norm = f + k1 * (1 - b + b * lengths[d] / avg)
                out[d] = out.get(d, 0.0) + w * f / norm
        return out

    def score_docs(self, query: Iterable[str], docs: Iterable[int]) -> dict[int, float]:
        """`scores(query)` for `docs` only (those sharing no term with `query` are left out).

        Each score is the same float `scores` gives: the same terms summed in the same order.
        The work is in the pairs of a query term and a document holding it; which documents
        hold a term is found in C (a set intersection), whatever the term's document frequency.
        """
        if not self._docs:
            return {}
        avg = self._total / len(self._docs) or 1.0
        k1, b, lengths = self.k1, self.b, self._lengths
        wanted = set(docs)
        out: dict[int, float] = {}
        for term, qtf in Counter(query).items():
            ids = self._postings.get(term)
            if not ids:
                continue
            w = qtf * self.idf(term)
            for d in ids.keys() & wanted:
                f = ids[d]
                norm = f + k1 * (1 - b + b * lengths[d] / avg)
                out[d] = out.get(d, 0.0) + w * f / norm
        return out
