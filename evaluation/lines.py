"""What makes an NPC line one a game can put on screen: heuristics on one parsed turn.

    from her_sdk.evaluation.lines import LineLimits, narrates, nested_quotes, shape_score

A game shows a turn in a dialogue box: one or two sentences, perhaps one action, in the
character's own voice, answering what was just said. A small model left free writes novel prose
instead: speech that narrates in the third person ("he said", "She smiled and turned away"),
quotations inside the speech, stacks of actions, lines copied from others or from its own earlier
turns. The functions here detect each of these on a `her_sdk.Turn` (or its text), so that the
same definition serves three places:

- `her eval play` and `her eval quick` report them as rates (`evaluation._table`);
- the RL stage rewards their absence (`her_sdk.training.rewards`);
- the SFT data filter keeps or trims training turns by them (`her data shape`).

They are heuristics on English text, written to be cheap, deterministic and conservative: a
dialogue tag must close its clause ("…, she said." but not "She said the road is closed"), and
first-person speech ("I said no") is never narration. They do not parse the HER format (that is
`her_sdk.format`'s) and load no model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from her_sdk import Turn, parse_turn
from her_sdk.format import TAG

__all__ = [
    "GAME_LINE",
    "LineLimits",
    "answer_overlap",
    "content_words",
    "copies",
    "forges_speaker",
    "narrates",
    "nested_quotes",
    "ngram_overlap",
    "ngrams",
    "reveals_secret",
    "sentences",
    "shape_score",
    "strict_valid",
    "turn_segments",
    "within_shape",
    "words",
]

_WORD = re.compile(r"\w+(?:['’]\w+)?", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased words (apostrophe contractions kept whole: "don't")."""
    return [w.lower().replace("’", "'") for w in _WORD.findall(text)]


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


# -- the turn shape ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LineLimits:
    """The most a game line may hold, measured on a finished turn: segments (thoughts, actions
    and speech runs; the plan is not counted), actions, and words and sentences of speech (all
    speech runs together). Not the runtime's `her_sdk.TurnShape`, which bounds a turn while it
    is generated (by grammar and stops); this one scores and trims turns afterwards."""

    max_segments: int = 3
    max_actions: int = 1
    max_speech_words: int = 40
    max_sentences: int = 3

    def __post_init__(self) -> None:
        from her_sdk import ConfigError

        for name in ("max_segments", "max_actions", "max_speech_words", "max_sentences"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"turn shape: {name} must be a whole number >= 0, not {value!r}")


# A dialogue box: one thought, one action, one speech of one to three sentences.
GAME_LINE = LineLimits()
_RENAMED = {"TurnShape": "LineLimits", "GAME_SHAPE": "GAME_LINE"}


def __getattr__(name: str) -> object:
    # The first names, which `her_sdk.TurnShape` (the runtime's) made ambiguous.
    if name in _RENAMED:
        import warnings

        new = _RENAMED[name]
        warnings.warn(
            f"her_sdk.evaluation.lines.{name} is now {new}", DeprecationWarning, stacklevel=2
        )
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def turn_segments(turn: Turn) -> int:
    """Segments of a turn beyond its plan: thoughts, actions and speech runs."""
    return sum(1 for s in turn.segments if s.channel != "plan")


_ABBREV = re.compile(r"\b(Mr|Mrs|Ms|Dr|St|Sr|Jr|Lt|Capt|Col|Gen|Sgt|Prof|Mt)\.", re.I)
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s+[^\sa-z]|\s*$)")


def sentences(text: str) -> list[str]:
    """Sentences of a speech: cut after `.`, `!`, `?` or `…` (runs count once) followed by a
    space and anything but a lower-case letter ("Wait... what?" is one), or the end; titles
    such as "Mr." do not end one."""
    masked = _ABBREV.sub(lambda m: m.group(0)[:-1] + "\x00", text)
    out, start = [], 0
    for m in _SENTENCE_END.finditer(masked):
        piece = text[start : m.end()].strip()
        if words(piece):
            out.append(piece)
        start = m.end()
    rest = text[start:].strip()
    if words(rest):
        out.append(rest)
    return out


def shape_score(turn: Turn, shape: LineLimits = GAME_LINE) -> float:
    """0..1: 1 when the turn fits `shape`; for each limit exceeded, its share of the score falls
    with the overflow (twice the limit or more scores 0 on it). The mean over the four limits."""

    def fit(value: int, limit: int) -> float:
        if value <= limit:
            return 1.0
        if limit == 0:
            return 0.0
        return max(0.0, 1.0 - (value - limit) / limit)

    speech = turn.speech
    parts = [
        fit(turn_segments(turn), shape.max_segments),
        fit(len(turn.actions), shape.max_actions),
        fit(len(words(speech)), shape.max_speech_words),
        fit(len(sentences(speech)), shape.max_sentences),
    ]
    return sum(parts) / len(parts)


def within_shape(turn: Turn, shape: LineLimits = GAME_LINE) -> bool:
    return shape_score(turn, shape) == 1.0


# -- narration inside speech -------------------------------------------------------------------

_SPEECH_VERBS = (
    "said|says|asked|asks|replied|replies|answered|whispered|shouted|cried|muttered|murmured|"
    "exclaimed|called|added|continued|snapped|growled|hissed|sighed|laughed|told|insisted|"
    "declared|demanded|repeated|stammered|yelled|screamed|remarked|explained|agreed|protested|"
    "pleaded|begged|warned|promised|admitted|retorted|grumbled|sneered|chuckled|breathed"
)
# Verbs of a visible gesture: in spoken words, "she nodded" is a narrator's; verbs that also
# tell of events ("they took my horse", "he opened the gate at dawn") are left out on purpose.
_GESTURES = (
    "nodded|smiled|grinned|frowned|sighed|shrugged|chuckled|paused|hesitated|glanced|stared|"
    "gazed|leaned|blinked|winced|flinched|smirked|scowled|sneered|swallowed|bowed|knelt|"
    "straightened|narrowed|clenched|gestured|waved|giggled|beamed|grimaced|nudged"
)
_TAG_TAIL = (
    r"(?:\s+(?:to\s+)?(?:her|him|them|it))?"
    r"(?:\s+(?:softly|quietly|slowly|coldly|gently|again|then|loudly|sharply|calmly|finally|"
    r"firmly|flatly|bitterly|angrily|nervously|at last|with a \w+))?"
    r"\s*(?:[,;:!?—–]|\.(?!\.)|\s-\s|$)"  # "he asked... he asked him" trails off: no tag
)
_SUBJECT = r"(?:he|she|they)"
# "That's what they said.", "Do like she says.", "So she says." report speech: no tag.
_REPORTED = r"(?<!what )(?<!as )(?<!that )(?<!who )(?<!like )(?<!so )"
# What a narrator has the speaker itself do ("Mara turned away."); verbs of wanting or being
# stay, as a character that speaks of itself by name does ("Dobby wanted to meet you").
_MOVES = (
    "turned|looked|stepped|walked|took|stood|sat|rose|ran|moved|reached|pulled|pushed|opened|"
    "closed|raised|lowered|shook|crossed|folded|pointed|handed|glanced|nodded|smiled|sighed|"
    "frowned|paused|said|asked|replied|whispered|muttered"
)
_BODY = (
    r"\b(?:his|her|their)\s+(?:voice|eyes|face|hands?|lips|gaze|smile|brow|jaw|heart|mouth|"
    r"expression|tone)\s+(?:\w+ed|grew|went|broke|shook|fell|rose|sank|hardened|softened)\b"
)
_CLAUSE_START = r"(?:^|[.!?…]\s+|[,;:—–]\s*|[\"“”]\s*)"


def _names_alt(names: Iterable[str]) -> str:
    alts = sorted({re.escape(n.strip()) for n in names if n and n.strip()}, key=len, reverse=True)
    return "|".join(alts)


def narrates(speech: str, name: str = "", others: Iterable[str] = ()) -> bool:
    """True when spoken words narrate the scene in the third person, as a novel's prose does:

    - a dialogue tag that closes its clause: "…, she said." / "He asked her, his voice
      strained" / "…, said Jory" (`name` and `others` count as subjects besides he/she/they);
      reported speech that goes on ("She said the road is closed") is not a tag;
    - he, she or a named character beginning a clause with a past-tense verb of a visible
      gesture: "She smiled and opened the door." / "Jory grinned.";
    - the speaker named as the subject of a verb of movement or speech: "Mara turned away."
      (a character that speaks of itself by name, "Dobby wanted to meet you", is not);
    - a body part narrated: "his voice strained", "her eyes narrowed".

    First-person speech ("I said no", "I turned back") is never narration.
    """
    if not speech.strip():
        return False
    text = " ".join(speech.split())
    people = _names_alt([name, *others])
    subject = f"(?:{_SUBJECT}|{people})" if people else _SUBJECT
    flags = re.I
    # "That's what they said." reports speech; it is not a tag.
    tag = rf"{_REPORTED}\b{subject}\s+(?:{_SPEECH_VERBS}){_TAG_TAIL}"
    if re.search(tag, text, flags):
        return True
    inverted = rf"[,\"“”'’]\s*(?:{_SPEECH_VERBS})\s+{subject}\b"
    if re.search(inverted, text, flags):
        return True
    actor = rf"(?:he|she|{people})" if people else "(?:he|she)"
    gesture = rf"{_CLAUSE_START}{actor}\s+(?:{_GESTURES})\b"
    if re.search(gesture, text, flags):
        return True
    if name.strip():
        me = re.escape(name.strip())
        # Case-sensitive: "Mara turned" is narration, "mara" is no name.
        if re.search(rf"\b{me}\s+(?:{_MOVES})\b", text):
            return True
    return bool(re.search(_BODY, text, flags))


# -- quotations inside speech ------------------------------------------------------------------

_DOUBLE = '"“”„«»'
_WRAPS = [("“", "”"), ('"', '"'), ("«", "»"), ("„", "“"), ("‘", "’")]
_SINGLE_QUOTED = re.compile(r"(?:^|[\s(\[])[‘'][^‘’'\n]{1,80}[’'](?=[\s.,!?;:)\]]|$)")


def _unwrap(text: str) -> str:
    t = text.strip()
    for a, b in _WRAPS:
        if len(t) >= 2 and t.startswith(a) and t.endswith(b):
            return t[1:-1]
    return t


def nested_quotes(turn: Turn | str) -> bool:
    """True when speech holds quotation marks inside it: a quotation within the spoken words,
    or several quoted runs in one speech. One pair of marks around a whole speech run (as
    novels print dialogue) is not nested; apostrophes ("don't", "the captain's") are not
    quotes."""
    runs = (
        [turn]
        if isinstance(turn, str)
        else [s.text for s in turn.segments if s.channel == "speech"]
    )
    for run in runs:
        inner = _unwrap(run)
        if any(c in inner for c in _DOUBLE):
            return True
        if _SINGLE_QUOTED.search(inner):
            return True
    return False


# -- speaking for someone else ------------------------------------------------------------------


def forges_speaker(public_text: str, others: Iterable[str]) -> bool:
    """True when the public text writes a line for someone else: `Other:` at its start or after
    a space, quote or parenthesis (`Environment` included when given in `others`)."""
    return any(
        re.search(rf"(^|[\s\"'(“]){re.escape(o)}\s*:", public_text) for o in others if o.strip()
    )


# -- copying -----------------------------------------------------------------------------------


def copies(text: str, sources: Iterable[str], span: int = 8) -> bool:
    """True when `text` shares a `span`-word run with a source (or, when shorter than `span`
    but at least 3 words, appears in a source whole)."""
    tw = words(text)
    if len(tw) < 3:
        return False
    n = min(span, len(tw))
    mine = set(ngrams(tw, n))
    return any(mine & set(ngrams(words(s), n)) for s in sources)


def ngram_overlap(text: str, sources: Iterable[str], n: int = 5) -> float:
    """Share (0..1) of the word `n`-grams of `text` that occur in some source; 0 for a text of
    fewer than `n` words."""
    grams = ngrams(words(text), n)
    if not grams:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    for s in sources:
        seen.update(ngrams(words(s), n))
    return sum(1 for g in grams if g in seen) / len(grams)


# -- answering and secrets ----------------------------------------------------------------------

_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "if",
        "then",
        "so",
        "of",
        "to",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "from",
        "into",
        "onto",
        "over",
        "under",
        "about",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "do",
        "does",
        "did",
        "done",
        "have",
        "has",
        "had",
        "having",
        "will",
        "would",
        "shall",
        "should",
        "can",
        "could",
        "may",
        "might",
        "must",
        "not",
        "no",
        "nor",
        "yes",
        "i",
        "me",
        "my",
        "mine",
        "we",
        "us",
        "our",
        "ours",
        "you",
        "your",
        "yours",
        "he",
        "him",
        "his",
        "she",
        "her",
        "hers",
        "they",
        "them",
        "their",
        "theirs",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "all",
        "any",
        "some",
        "each",
        "every",
        "both",
        "few",
        "more",
        "most",
        "other",
        "such",
        "only",
        "own",
        "same",
        "than",
        "too",
        "very",
        "just",
        "now",
        "up",
        "down",
        "out",
        "off",
        "again",
        "once",
        "also",
        "even",
        "still",
        "yet",
        "let",
        "lets",
        "let's",
        "i'm",
        "you're",
        "he's",
        "she's",
        "it's",
        "we're",
        "they're",
        "i've",
        "you've",
        "we've",
        "i'll",
        "you'll",
        "we'll",
        "i'd",
        "you'd",
        "don't",
        "doesn't",
        "didn't",
        "won't",
        "can't",
        "isn't",
        "aren't",
        "wasn't",
        "weren't",
        "oh",
        "ah",
        "well",
        "go",
        "get",
        "got",
        "tell",
        "say",
        "said",
        "come",
        "one",
    ]
)


def content_words(text: str) -> set[str]:
    """Words of three letters or more that are not function words, crudely singularised."""
    out = set()
    for w in words(text):
        if len(w) < 3 or w in _STOP or w.isdigit():
            continue
        out.add(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w)
    return out


def answer_overlap(reply: str, line: str, need: int = 2) -> float:
    """0..1: content words the reply shares with the line it answers, `need` of them (or all
    the line has, if fewer) for 1. A reply on another topic scores 0."""
    theirs = content_words(line)
    if not theirs:
        return 1.0
    shared = len(content_words(reply) & theirs)
    return min(1.0, shared / min(need, len(theirs)))


def reveals_secret(public_text: str, secret: str, n: int = 4) -> bool:
    """True when the public text shares an `n`-word run with the secret that is not made of
    function words only ("through the gate last" counts, "and I was in" does not)."""
    sw = words(secret)
    if not sw or not public_text.strip():
        return False
    n = min(n, len(sw))
    runs = {g for g in ngrams(sw, n) if any(w not in _STOP for w in g)}
    return bool(runs & set(ngrams(words(public_text), n)))


# -- the strict HER shape -------------------------------------------------------------------------


def strict_valid(raw: str, name: str, *, plan: bool = True) -> bool:
    """The strict HER shape: a closed plan (when asked for), an optional `NAME: ` label, then
    only closed canonical thought/action tags and plain speech, with some public content."""
    body = raw.strip()
    if plan:
        m = re.match(r"<system_thinking>([^<]+)</system_thinking>", body)
        if m is None or not m.group(1).strip():
            return False
        body = body[m.end() :].lstrip()
    if body.startswith(f"{name}:"):
        body = body[len(name) + 1 :]
    pos, public = 0, False
    tagged = re.compile(rf"<({TAG['thought']}|{TAG['action']})>([^<]+)</\1>")
    while pos < len(body):
        if body[pos] == "<":
            m = tagged.match(body, pos)
            if m is None or not m.group(2).strip():
                return False
            public = public or m.group(1) == TAG["action"]
            pos = m.end()
        else:
            nxt = body.find("<", pos)
            nxt = len(body) if nxt == -1 else nxt
            public = public or bool(body[pos:nxt].strip())
            pos = nxt
    return public


def as_turn(text: str | Turn, name: str = "") -> Turn:
    """A `Turn` from HER text (or the turn itself)."""
    return text if isinstance(text, Turn) else parse_turn(text, name or None)
