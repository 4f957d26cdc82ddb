"""Fitting a prompt to the context window: the fewest oldest memories are left out, whatever
the search starts from (the last turn's cut), and a turn whose cut did not move renders its
prompt a few times, not once per halving of the memory."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from her_sdk._prompting import _TRIMMED, fit
from her_sdk.format import Heard, Prompt


def _setup(sizes: list[int]):
    memory = [Heard(speaker="P", speech="x" * n) for n in sizes]
    renders: list[int] = []

    def render(history) -> Prompt:
        renders.append(len(history))
        text = "persona|" + "|".join(h.speech for h in history if isinstance(h, Heard))
        return Prompt(text=text, stop=[])

    return memory, render, renders


def _brute(memory, budget: int, summarized: bool) -> int | None:
    head = [] if summarized else [Heard(speaker="", speech=_TRIMMED.speech)]
    for k in range(len(memory) + 1):
        history = memory if k == 0 else [*head, *memory[k:]]
        text = "persona|" + "|".join(h.speech for h in history)
        if len(text) <= budget:
            return k
    return None


@given(
    st.lists(st.integers(1, 40), max_size=60),
    st.integers(5, 900),
    st.integers(-3, 70),
    st.booleans(),
)
def test_any_hint_finds_the_fewest_left_out(sizes, budget, hint, summarized):
    memory, render, _ = _setup(sizes)
    got = fit(render, len, memory, budget, summarized=summarized, hint=hint)
    want = _brute(memory, budget, summarized)
    if want is None:
        assert got is None
    else:
        assert got is not None and got[1] == want
        assert len(got[0].text) <= budget


def test_a_cut_that_did_not_move_costs_a_few_renders():
    memory, render, renders = _setup([20] * 2000)
    first = fit(render, len, memory, 4000, summarized=True)
    assert first is not None
    cold = len(renders)
    renders.clear()
    again = fit(render, len, memory, 4000, summarized=True, hint=first[1])
    assert again is not None and again[1] == first[1]
    assert len(renders) <= 3 < cold
