"""Scoring: the judge's flaws to a 0-100 score, BLEU and ROUGE-L, and the CPU turn metrics.

CoSER pieces reproduced here (gca_evaluation/main.py and utils.py, repository Neph0s/CoSER):
`extract_json` (the longest JSON value in a reply, newlines inside strings escaped first),
the judge-answer check (`parse_response`), the per-dimension score
`clip(100 - 5 * (S - 0.3 * R), 0, 100)`, `remove_inner_thoughts`, `extract_nsp`, and
`calculate_bleu_rouge` (NLTK `word_tokenize` + `sentence_bleu`, the `rouge` package's ROUGE-L F1).
HER's variants of the text helpers (`her_*`, eval_code/benchmarks/multi_turn/coser/utils.py,
repository cydu24/HER) are what the `her` preset passes between its actors and to its judge.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence

from .lines import ngrams, words

__all__ = [
    "bleu_rouge",
    "extract_json",
    "extract_nsp",
    "judge_flaws",
    "remove_inner_thoughts",
    "score_from_flaws",
]


# -- judge answers ----------------------------------------------------------------------------


def extract_json(text: str) -> object | None:
    """CoSER's `_extract_json`: the whole reply as JSON, else the longest JSON value in it."""
    text = re.sub(r'"([^"\\]*(\\.[^"\\]*)*)"', lambda m: m.group().replace("\n", r"\\n"), text)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    found = []
    decoder = json.JSONDecoder()
    start = 0
    while start < len(text):
        try:
            obj, end = decoder.raw_decode(text[start:])
            found.append(obj)
            start += end
        except json.JSONDecodeError:
            start += 1
    if not found:
        return None
    return max(found, key=lambda x: len(json.dumps(x)))


def judge_flaws(
    answer: object, dimension: str, dimensions: Iterable[str], preset: str = "coser"
) -> list[dict] | None:
    """The flaws of `dimension` in a parsed judge answer, or None when the answer is malformed.

    CoSER's `parse_response`: an object whose keys are all dimension names, each with a `flaws`
    list; a flaw without severity gets severity 1. Stricter than CoSER in one way: the asked
    dimension must be present (CoSER would crash on the missing key). Under the `her` preset a
    missing severity stays missing (HER counts it as 0).
    """
    names = set(dimensions)
    if not isinstance(answer, dict) or not answer or dimension not in answer:
        return None
    for key, value in answer.items():
        if key not in names or not isinstance(value, dict) or "flaws" not in value:
            return None
        if not isinstance(value["flaws"], list):
            return None
        for flaw in value["flaws"]:
            if not isinstance(flaw, dict):
                return None
            if preset == "coser" and flaw.get("severity") is None:
                flaw["severity"] = 1
    return answer[dimension]["flaws"]


def severity_sum(flaws: Sequence[dict], preset: str = "coser") -> float:
    """S: CoSER sums integer severities only; HER also counts floats."""
    kinds = (int,) if preset == "coser" else (int, float)
    return sum(
        f["severity"]
        for f in flaws
        if isinstance(f.get("severity"), kinds) and not isinstance(f.get("severity"), bool)
    )


def score_from_flaws(flaws: Sequence[dict], actor_rounds: int, preset: str = "coser") -> float:
    """`clip(100 - 5 * (S - 0.3 * R), 0, 100)`: S the severity sum, R the non-Environment
    messages of the simulation (more messages earn more tolerance)."""
    s = severity_sum(flaws, preset)
    return max(0.0, min(100.0 - (s - 0.3 * actor_rounds) * 5, 100.0))


# -- text helpers from CoSER -----------------------------------------------------------------


def remove_inner_thoughts(dialogue: str) -> str:
    """CoSER's `remove_inner_thoughts`: drop `[...]`, HER thinking tags, and blank lines."""
    cleaned = re.sub(r"\[.*?\]", "", dialogue)
    cleaned = "\n".join(line.strip() for line in cleaned.split("\n"))
    cleaned = re.sub(r"\n+", "\n", cleaned)
    for pat in (
        r"\s*<\s*system[_\s]+think(?:ing)?\s*>.*?</\s*system[_\s]+think(?:ing)?\s*>\s*",
        r"\s*<\s*role[_\s]+think(?:ing)?\s*>.*?</\s*role[_\s]+think(?:ing)?\s*>\s*",
        r"\s*<\s*[_\s]+think(?:ing)?\s*>.*?</\s*[_\s]+think(?:ing)?\s*>\s*",
    ):
        cleaned = re.sub(pat, "", cleaned, flags=re.S).strip()
    return cleaned.strip()


def add_speaker_name(text: str, speaker: str) -> str:
    """CoSER's `add_speaker_name`: prefix `speaker: ` unless a line already starts with it."""
    if any(
        line.strip().startswith(f"{speaker}:") or line.strip().startswith(f"{speaker}：")
        for line in text.split("\n")
    ):
        return text
    return f"{speaker}: {text}"


# -- text helpers from HER's eval (eval_code/benchmarks/multi_turn/coser/utils.py) -------------


def _squeeze_lines(text: str) -> str:
    """Each line stripped, runs of newlines made one (both references' clean-up)."""
    text = "\n".join(line.strip() for line in text.split("\n"))
    return re.sub(r"\n+", "\n", text)


_HER_SYSTEM_TAG = r"<\s*system[_\s]*think(?:ing)?\s*>"  # a plan's tags, as HER matches them
_HER_SYSTEM_CLOSE = r"</\s*system[_\s]*think(?:ing)?\s*>"


def her_remove_system_thinking(dialogue: str) -> str:
    """HER's `remove_system_thinking` (utils.py lines 19-56): plans (closed or not), `<think>`,
    `<thought>` and stray `<role_think>` blocks removed, lines squeezed. Role thoughts stay."""
    cleaned = re.sub(_HER_SYSTEM_TAG + r".*?" + _HER_SYSTEM_CLOSE, "", dialogue, flags=re.S)
    cleaned = re.sub(_HER_SYSTEM_TAG + r".*$", "", cleaned, flags=re.S)
    cleaned = re.sub(_HER_SYSTEM_CLOSE, "", cleaned)
    for tag in ("think", "thought", "role_think"):
        cleaned = re.sub(rf"<{tag}>.*?</{tag}>", "", cleaned, flags=re.S)
        cleaned = re.sub(rf"<{tag}>.*", "", cleaned, flags=re.S)
    return _squeeze_lines(cleaned).strip()


def her_cut_in_plan(raw: str) -> bool:
    """Whether a reply opened a plan (by HER's tag patterns) and never closed it."""
    opened = re.search(_HER_SYSTEM_TAG, raw)
    return opened is not None and not re.compile(_HER_SYSTEM_CLOSE).search(raw, opened.end())


def her_remove_inner_thoughts(dialogue: str) -> str:
    """HER's `remove_inner_thoughts` (utils.py lines 172-199): thinking blocks of any kind and
    `[...]` removed, lines squeezed. Only closed blocks go (see `coser._her_public_view`)."""
    cleaned = dialogue
    for pat in (
        r"\s*<\s*system[_\s]+think(?:ing)?\s*>.*?</\s*system[_\s]+think(?:ing)?\s*>\s*",
        r"\s*<\s*role[_\s]+think(?:ing)?\s*>.*?</\s*role[_\s]+think(?:ing)?\s*>\s*",
        r"\s*<\s*\w*[_\s]*think(?:ing)?\s*>.*?</\s*\w*[_\s]*think(?:ing)?\s*>\s*",
    ):
        cleaned = re.sub(pat, "", cleaned, flags=re.S).strip()
    cleaned = re.sub(r"\[.*?\]", "", cleaned)
    return _squeeze_lines(cleaned).strip()


def her_long_thinking_to_role(dialogue: str) -> str:
    """HER's `remove_long_role_thinking` (utils.py lines 279-287): `<long_role_thinking>` blocks
    become `<role_thinking>` blocks."""
    return re.sub(
        r"<long_role_thinking>(.*?)</long_role_thinking>",
        r"<role_thinking>\1</role_thinking>",
        dialogue,
        flags=re.S,
    )


def her_remove_role_thinking(dialogue: str) -> str:
    """HER's `remove_role_thinking` (utils.py lines 202-215): `<role_thinking>` blocks and
    `[...]` removed (its judge-side ablation, `eval_remove_role_thinking`)."""
    cleaned = re.sub(r"<role_thinking>.*?</role_thinking>", "", dialogue, flags=re.S)
    return re.sub(r"\[.*?\]", "", cleaned, flags=re.S).strip()


def her_coser_notation(dialogue: str) -> str:
    """HER's `convert_her_format` (utils.py lines 218-239): `<role_thinking>` -> `[...]`,
    `<role_action>` -> `(...)`, `<role_speech>` tags dropped; what its judge reads."""
    for old, new in (
        ("<role_thinking>", "["),
        ("</role_thinking>", "]"),
        ("<role_action>", "("),
        ("</role_action>", ")"),
        ("<role_speech>", ""),
        ("</role_speech>", ""),
    ):
        dialogue = dialogue.replace(old, new)
    return dialogue.strip()


_NSP_RE = re.compile(
    r"(?:\*\*|#)?\s*Next\s+Speaker\s*(?:\*\*|#)?\s*(?:[:\-]|\bis\b)?\s*\*?([^\n\*]+)", re.I
)


def extract_nsp(response: str) -> str | None:
    """CoSER's `extract_nsp`: the name after the last "Next Speaker:"."""
    matches = _NSP_RE.findall(response)
    if matches:
        name = matches[-1].strip().rstrip(".,!\"'").replace("*", "")
        if name:
            return name
    return None


def parse_nsp_her(response: str, valid: Sequence[str], end_chat: str) -> str:
    """HER's `parse_nsp_response` (the `her` preset): lenient name matching, else "random"."""
    if not response.strip() or len(response) > 1500:
        return "random"
    named = extract_nsp(response)
    if named:
        for c in valid:
            if c.lower() == named.lower() or c.lower() in named.lower():
                return c
        if "end chat" in named.lower():
            return end_chat
        if "random" in named.lower():
            return "random"
    cleaned = re.sub(
        r"<\s*(system[_\s]*think(?:ing)?|think|thought)\s*>.*?(</[^>]*>|$)",
        "",
        response,
        flags=re.S,
    )
    cleaned = re.sub(r"\*\*.*?\*\*", "", cleaned)
    cleaned = re.sub(r"\*.*?\*", "", cleaned)
    first = cleaned.strip().split("\n")[0].strip()
    if ":" in first:
        first = first.split(":")[0].strip()
    if "END CHAT" in first.upper():
        return end_chat
    if "random" in first.lower():
        return "random"
    for c in valid:
        if c.lower() == first.lower() or c.lower() in first.lower():
            return c
    for c in valid:
        if c in cleaned:
            return c
    return "random"


# -- BLEU and ROUGE-L, as CoSER computes them --------------------------------------------------


def _word_tokenize(text: str) -> tuple[list[str], str]:
    """NLTK's `word_tokenize` when its Punkt model is installed; else the same Treebank tokenizer
    on sentences split by an untrained Punkt (no abbreviation list; nothing is downloaded)."""
    try:
        import nltk
        from nltk.tokenize import NLTKWordTokenizer
        from nltk.tokenize.punkt import PunktSentenceTokenizer
    except ImportError:
        from her_sdk import MissingDependencyError

        raise MissingDependencyError("nltk", "eval") from None
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return nltk.word_tokenize(text), "nltk-punkt"
    except LookupError:
        word = NLTKWordTokenizer()
        sents = PunktSentenceTokenizer().tokenize(text)
        return [t for s in sents for t in word.tokenize(s)], "punkt-untrained"


def bleu_rouge(reference: Sequence[dict], simulation: Sequence[dict]) -> tuple[float, float, str]:
    """CoSER's `calculate_bleu_rouge`: (BLEU, ROUGE-L F1, tokenizer used).

    `reference`: gold messages `{character, message}`; `simulation`: `{role, content}` (the
    content already carries the speaker's name, as model replies do). An empty side scores 0
    (the `rouge` package refuses empty text; CoSER would stop there).
    """
    sim = "\n\n".join(m["content"].strip("\n") for m in simulation)
    ref = "\n\n".join(f"{m['character']}: {m['message']}".strip("\n") for m in reference)
    try:
        from nltk.translate.bleu_score import sentence_bleu
        from rouge import Rouge
    except ImportError:
        from her_sdk import MissingDependencyError

        raise MissingDependencyError("nltk and rouge", "eval") from None
    ref_tokens, tokenizer = _word_tokenize(ref.lower())
    sim_tokens, _ = _word_tokenize(sim.lower())
    if not sim.strip() or not ref.strip() or not sim_tokens:
        return 0.0, 0.0, tokenizer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NLTK warns when a higher-order n-gram has no match
        bleu = float(sentence_bleu([ref_tokens], sim_tokens))
    try:
        rouge_l = float(Rouge().get_scores(sim, ref)[0]["rouge-l"]["f"])
    except (ValueError, RecursionError):
        rouge_l = 0.0
    return bleu, rouge_l, tokenizer


# -- CPU turn metrics (her eval quick, her eval play) ---------------------------------------------
# Words, n-grams and copying are `lines`' (one definition for evaluation, rewards and data).


def distinct(texts: Iterable[str], n: int) -> float | None:
    """Unique word n-grams over all n-grams, across all texts."""
    grams: list[tuple[str, ...]] = []
    for t in texts:
        grams += ngrams(words(t), n)
    return len(set(grams)) / len(grams) if grams else None


def self_repetition(text: str, n: int = 4) -> float:
    """Share of a text's word n-grams that already occurred earlier in it (looping)."""
    grams = ngrams(words(text), n)
    if not grams:
        return 0.0
    seen: set = set()
    repeats = 0
    for g in grams:
        if g in seen:
            repeats += 1
        seen.add(g)
    return repeats / len(grams)


def mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None


def median(values: Iterable[float | None]) -> float | None:
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def counts(items: Iterable[str]) -> dict[str, int]:
    return dict(Counter(items))
