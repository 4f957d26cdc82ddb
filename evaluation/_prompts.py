"""The prompts of the GCA protocol: judge rubric, environment model, next-speaker prediction.

The text follows the reference implementations word for word, because the prompts *are* the
protocol: a judge shown other words gives other scores. Sources:

- `JUDGE_TEMPLATE` and `DIMENSIONS` (brief and flaw criteria of each dimension): CoSER's
  `gca_evaluation/prompts.py` (`critic_prompts`, repository Neph0s/CoSER), which HER's
  MIT-licensed `eval_code/benchmarks/multi_turn/coser/prompts.py` (cydu24/HER) reproduces.
  Line ends are plain newlines (CoSER's file has CRLF) and trailing spaces are dropped.
  `JUDGE_EXAMPLE_HER` is HER's balanced version of the JSON example (CoSER's has unbalanced
  brackets); the `her` preset uses it.
- `ENVIRONMENT_TEMPLATE`: CoSER's `get_environment_prompt` (`gca_evaluation/utils.py`), the same
  in HER's adaptation; `{model_role}` is drawn from the same four phrases with the record's RNG.
- `NSP_TEMPLATE`: CoSER's `get_nsp_prompt`; `NSP_RULES_HER` is what HER's
  `get_nsp_prompt(with_reasoning=True)` appends (the `her` preset).
- `FIX_JSON_PROMPT`: CoSER's `extract_json._fix_json`, sent to the judge when its answer is not
  parseable JSON.
- `her_eval_character_prompt`: the actor system prompt of HER's eval code
  (`get_character_prompt(model_type="her", fixed_template=True)`, eval_code/benchmarks/
  multi_turn/coser/prompts.py lines 8-109), which the `her` preset's actors get; with
  `plan=False` its "her_without_systhink" variant. The coser preset's actors get her_sdk's own
  prompts (`her_sdk.format`), see `her_sdk.evaluation.coser` for why.

Placeholders are filled with `str.replace`, never `str.format`, so braces in a test set's text
are safe.
"""

from __future__ import annotations

import hashlib
import random

from her_sdk.format import ENVIRONMENT

__all__ = [
    "DIMENSIONS",
    "END_CHAT",
    "FIX_JSON_PROMPT",
    "JUDGE_TEMPLATE",
    "NSP",
    "environment_prompt",
    "her_eval_character_prompt",
    "judge_prompt",
    "nsp_prompt",
    "prompts_hash",
]

NSP = "NSP"
END_CHAT = "<END CHAT>"

JUDGE_TEMPLATE = "\n".join(
    [
        (
            "You are a literary critic specializing in character analysis and dialogue "
            "evaluation. Given a simulated conversation for a plot in {book}, your task is to "
            "evaluate this conversation via the following steps:"
        ),
        "",
        "1. Read and understand the provided materials about {book}:",
        "   * Story context and scenario.",
        "   * Profiles of the main characters, including {major_characters}.",
        "   * The original conversation from {book} in the same scenario as a reference.",
        "",
        (
            "  2. Evaluate the simulated conversation in terms of {dimension_name}, i.e., "
            "{dimension_brief}."
        ),
        (
            "   Note that, each character message is composed of speech, action (wrapped within "
            "(...) ), and inner thoughts (wrapped within [...] ). The inner thoughts are not "
            "spoken aloud and are thus invisible to other characters."
        ),
        "   The detailed evaluation criteria will be provided below.",
        "   {additional_instructions}",
        "",
        "## Scenario",
        "",
        "### Plot Summary",
        "",
        "{plot_summary}",
        "",
        "### Current Scenario",
        "",
        "{scenario}",
        "",
        "## Character Profiles",
        "",
        "{character_profiles}",
        "",
        "## Original Conversation",
        "",
        "{original_conversation}",
        "",
        "## Evaluation Criteria",
        "",
        "To evaluate the simulated conversation, identify the following types of flaws:",
        "",
        "{dimension_criteria}",
        "",
        "## Scoring Guidelines",
        "",
        "1. Identify all instances of flaws occurred in the simulated conversation.",
        "",
        (
            "2. For each flaw identified, determine its level of severity into 1 to 5, where 1 "
            "indicates minor, 3 indicates moderate, and 5 indicates severe."
        ),
        "",
        "## Output Requirements",
        "",
        "Provide your evaluation in JSON format:",
        "",
        "Example Output:",
        "{",
        '    "{dimension_name}": {',
        '        "flaws": [',
        "          {",
        '            "instance": <comment on the flaw instance>,',
        '            "type": <flaw type>,',
        '            "severity": <range from 1 (minor) to 5 (severe)>',
        "          },",
        "    },",
        "}",
        "===Dialogue Content===",
        "",
    ]
)

# The example block of the template, and HER's balanced version of it (the `her` preset).
JUDGE_EXAMPLE_COSER = "\n".join(
    [
        "Example Output:",
        "{",
        '    "{dimension_name}": {',
        '        "flaws": [',
        "          {",
        '            "instance": <comment on the flaw instance>,',
        '            "type": <flaw type>,',
        '            "severity": <range from 1 (minor) to 5 (severe)>',
        "          },",
        "    },",
        "}",
        "",
    ]
)
JUDGE_EXAMPLE_HER = "\n".join(
    [
        "Example Output:",
        "{",
        '    "{dimension_name}": {',
        '        "flaws": [',
        "          {",
        '            "instance": <comment on the flaw instance>,',
        '            "type": <flaw type>,',
        '            "severity": <range from 1 (minor) to 5 (severe)>',
        "          }",
        "        ]",
        "    }",
        "}",
        "",
        "",
    ]
)

# dimension name -> (brief, flaw criteria)
_STORYLINE_CONSISTENCY = "\n".join(
    [
        "### Storyline Consistency",
        "   - Type: Storyline Consistency",
        (
            "     * Characters' reactions (emotions, attitudes, behaviors) in the simulated "
            "conversation deviate from those in the original conversation"
        ),
    ]
)
_ANTHROPOMORPHISM = "\n".join(
    [
        "### Anthropomorphism",
        "   - Type: Self-identity",
        "     * Lacks initiative and goals",
        "     * Does not make independent decisions",
        "     * Lacks clear preferences and dislikes",
        (
            "     * Behaves like a 'helpful AI assistant' by being overly verbose, helpful, "
            "didactic, moralistic, submissive or easily persuaded if it is not the character's "
            "personality"
        ),
        "",
        "   - Type: Emotional Depth",
        "     * Lacks psychological complexity and exhibits rigid, superficial reactions",
        "     * Directly speaks out all thoughts and feelings, instead of using subtext",
        "",
        "   - Type: Persona Coherence",
        ("     * Shows inconsistent or rapidly changing personality traits and emotional patterns"),
        "",
        "   - Type: Social Interaction",
        "     * Shows a lack of understanding of others' thoughts and feelings",
        "     * Reacts rigidly to others without considering the context.",
        "     * Demonstrate a lack of appropriate social skills.",
    ]
)
_CHARACTER_FIDELITY = "\n".join(
    [
        "### Character Fidelity",
        "   (Only apply to the main characters: {major_characters})",
        "   - Type: Character Language",
        (
            "     * Uses vocabulary, expressions, and tone that are not appropriate for the "
            "characters' traits or  social/educational background"
        ),
        "",
        "   - Type: Knowledge & Background",
        "     * Fails to demonstrate character-specific knowledge, background or experiences",
        "     * Includes future information beyond the character's current stage",
        "",
        "   - Type: Personality & Behavior",
        (
            "     * Shows emotions, thoughts, behaviors, values, beliefs, and decisions that "
            "conflict with their personality and background"
        ),
        ("     * Shows interest in topics that are uninteresting and unrelated to the character"),
        (
            "     * Character's thoughts, emotions, and behaviors demonstrate contrasting "
            "personality traits compared to the reference conversation"
        ),
        (
            "     * Exhibits contrasting reactions compared to those in the reference "
            "conversation if situated in similar contexts. (Such flaws should be counted both in "
            'the "Storyline Consistency" dimension and the "Character Fidelity" dimension.)'
        ),
        "",
        "   - Type: Relationship & Social Status",
        (
            "     * Interacts inappropriately with other characters regarding their background, "
            "relationship and social status"
        ),
    ]
)
_STORYLINE_QUALITY = "\n".join(
    [
        "### Storyline Quality",
        "   - Type: Flow & Progression",
        "     * Shows unnatural progression or lacks meaningful developments",
        "     * Dialogue is verbose and redundant",
        "     * Repeats others' viewpoints or previously mentioned information",
        (
            "     * Mechanically repeats one's own words or phrases. More repetitions lead to "
            "higher severity (up to 10)."
        ),
        "",
        "   - Type: Logical Consistency",
        "     * Contains factual contradictions between statements or perspectives",
    ]
)
DIMENSIONS: dict[str, tuple[str, str]] = {
    "Storyline Consistency": (
        (
            "Whether the storyline and characters' reactions in the simulated conversation "
            "align well with those in the reference conversation"
        ),
        _STORYLINE_CONSISTENCY,
    ),
    "Anthropomorphism": ("How human-like and natural the characters behave", _ANTHROPOMORPHISM),
    "Character Fidelity": (
        "How well the characters match their established profiles from the book",
        _CHARACTER_FIDELITY,
    ),
    "Storyline Quality": (
        "How well the conversation maintains logical consistency and narrative quality",
        _STORYLINE_QUALITY,
    ),
}

ENVIRONMENT_TEMPLATE = "\n".join(
    [
        (
            "You are {model_role} for a role-playing game. Your task is to provide the "
            "environmental feedback: Based on the characters' interactions, dialogues, and "
            "actions, describe the resulting changes in the environment. This includes:"
        ),
        "   - Physical changes in the setting",
        "   - Reactions of background characters or crowds",
        "   - Ambient sounds, weather changes, or atmospheric shifts",
        "   - Any other relevant environmental details",
        "",
        (
            "Your descriptions should be vivid and help set the scene, but avoid dictating the "
            "actions or dialogue of the main characters (including {major_characters})."
        ),
        "",
        "Important notes:",
        (
            "- You may include actions and reactions of minor characters or crowds, as long as "
            "they're not main characters (including {major_characters})."
        ),
        ("- Keep your environmental descriptions concise but impactful, typically 1-3 sentences."),
        (
            "- Respond to subtle cues in the characters' interactions to create a dynamic, "
            "reactive environment."
        ),
        "- Your output should match the tone, setting, and cultural context of the scenario.",
        "",
        "===The scenario is as follows===",
        "{scenario}",
    ]
)
NSP_TEMPLATE = "\n".join(
    [
        (
            "Your task is to predict the next speaker for a role-playing game. That is, you need "
            "to determine which character (or the Environment) might act next based on their "
            "previous interactions. The Environment is a special role that provides the "
            "environmental feedback. Choose a name from this list: {all_characters}. If it's "
            'unclear who should act next, output "random". If you believe the scene or '
            'conversation should conclude, output "<END CHAT>".'
        ),
        "",
        "===The scenario is as follows===",
        "{scenario}",
        "",
        "===Output Format===",
        "You must structure your response as follows:",
        "1. Reasoning: Explain your thought process.",
        "2. Next Speaker: Select exactly one character name from the list: {all_characters}.",
        "",
    ]
)
NSP_RULES_HER = "\n".join(
    [
        "",
        "",
        "===CRITICAL RULES===",
        "1. NEVER select the character who just spoke",
        '2. The "Next Speaker" field must contain ONLY ONE name from the list',
        '3. If uncertain, output "random" as the Next Speaker',
        '4. If the scene should end, output "<END CHAT>" as the Next Speaker',
        "",
        "Example output:",
        (
            "Reasoning: Based on the previous dialogue, Character A just made a provocative "
            "statement, so Character B would naturally respond."
        ),
        "Next Speaker: Character B",
    ]
)
FIX_JSON_PROMPT = "\n".join(
    [
        (
            "I will provide you with a JSON string that contains errors, making it unparseable "
            "by `json.loads`. The most common issue is the presence of unescaped double quotes "
            "inside strings. Your task is to output the corrected JSON string. The JSON string "
            "to be corrected is:"
        ),
        "{json_response}",
        "",
    ]
)


MODEL_ROLES = (
    "an environment model",
    "a world model",
    "a world simulator",
    "an environment simulator",
)


def _fill(template: str, **values: str) -> str:
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def environment_prompt(major_characters: list[str], scenario: str, rng: random.Random) -> str:
    """System prompt of the environment model (CoSER `get_environment_prompt`)."""
    major = [c for c in major_characters if c != ENVIRONMENT]
    return _fill(
        ENVIRONMENT_TEMPLATE,
        model_role=rng.choice(MODEL_ROLES),
        major_characters=repr(major),  # CoSER formats the Python list itself
        scenario=scenario,
    )


def nsp_prompt(all_characters: list[str], scenario: str, *, preset: str = "coser") -> str:
    """System prompt of the next-speaker predictor (CoSER `get_nsp_prompt`; HER's rules added
    under the `her` preset)."""
    text = _fill(NSP_TEMPLATE, all_characters=repr(list(all_characters)), scenario=scenario)
    if preset == "her":
        text = text.rstrip("\n") + NSP_RULES_HER
    return text


def judge_prompt(
    dimension: str,
    *,
    book: str,
    plot_summary: str,
    scenario: str,
    character_profiles: str,
    original_conversation: str,
    major_characters: list[str],
    additional_instructions: str = "",
    preset: str = "coser",
) -> str:
    """The judge's system prompt for one dimension; the simulated dialogue is the user message.

    As in both references, the criteria are inserted after the template's placeholders are
    filled (CoSER replaces them one by one, HER calls `str.format` once, which does not fill what
    it inserts), so the Character Fidelity criteria reach the judge with a literal
    "{major_characters}": the judge prompt the paper's numbers were measured with.
    """
    brief, criteria = DIMENSIONS[dimension]
    template = JUDGE_TEMPLATE
    if preset == "her":
        template = template.replace(JUDGE_EXAMPLE_COSER, JUDGE_EXAMPLE_HER)
    text = _fill(
        template,
        book=book,
        plot_summary=plot_summary,
        scenario=scenario,
        character_profiles=character_profiles,
        original_conversation=original_conversation,
        major_characters=", ".join(major_characters),
        additional_instructions=additional_instructions,
        dimension_name=dimension,
        dimension_brief=brief,
    )
    return _fill(text, dimension_criteria=criteria)


# eval_code/benchmarks/multi_turn/coser/prompts.py lines 43-49 and 59-66: the rules HER's eval
# adds for its actors (with `{character}` replaced by the actor's name).
_HER_EVAL_RULES = """===CRITICAL RULES (MUST FOLLOW)===
1. You are ONLY playing {character}. NEVER speak or act as other characters.
2. Output ONLY ONE turn of dialogue. Do NOT generate multiple conversation rounds.
3. NEVER include other character names followed by colons (e.g., "OtherCharacter:") in your output.
4. Keep your response concise and focused on your character's single turn.
5. Stop after completing your character's thought, speech, and action for this turn.
6. Limit your response to approximately 200 words.
"""

# prompts.py lines 59-73 (model_type "her", the default): the plan and the response.
_HER_EVAL_FORMAT = (
    "\n\n"
    + _HER_EVAL_RULES
    + """
===Requirements===
Your output should follow this two-part structure in strict order:
1. System Thinking: A single block at the very beginning, wrapped in <system_thinking> and </system_thinking>. This is the third-person analysis of how to portray the role.
2. Role-play Response: The response include the role's thought, speech and action. Use <role_thinking> your thought </role_thinking> and <role_action> your action</role_action> as needed. These three elements (thought, speech and action) can appear multiple times and be freely interleaved.
(all thinking is invisible to others)


"""  # noqa: E501
)

# prompts.py lines 40-55 (model_type "her_nosys" / "her_without_systhink"): no plan.
_HER_EVAL_FORMAT_NO_PLAN = (
    "\n"
    + _HER_EVAL_RULES
    + """
===Requirements===
Your output should be a Role-play Response that includes the role's thought, speech and action. Use <role_thinking> your thought </role_thinking> for thoughts (invisible to others) and <role_action> your action </role_action> for actions (visible to others). These three elements (thought, speech and action) can appear multiple times and be freely interleaved.
(all thinking is invisible to others)
"""  # noqa: E501
)


def her_eval_character_prompt(
    *,
    book: str,
    character: str,
    profile: str,
    scenario: str,
    motivation: str,
    other_profiles: dict[str, str],
    plan: bool = True,
) -> str:
    """An actor's system prompt in HER's eval (`get_character_prompt(model_type="her")`).

    Byte for byte what HER's function returns, blank lines included: `other_profiles` may hold
    the actor itself (skipped, as there); `motivation` is the record's `key_characters`
    motivation. The plot summary is not part of it (HER's fixed template ignores `background`).
    """
    others = "".join(
        f"\n{name}: {text}\n" for name, text in other_profiles.items() if name != character
    )
    if others:
        others = f"===Information about the other Characters===\n{others}\n\n"
    inner = f"===Your Inner Thoughts===\n{motivation}\n\n" if motivation else ""
    output_format = _HER_EVAL_FORMAT if plan else _HER_EVAL_FORMAT_NO_PLAN
    return (
        f"You are {character} from {book}.\n\n"
        f"==={character}'s Profile===\n{profile}\n\n"
        f"===Current Scenario===\n{scenario}\n\n"
        f"{others}{inner}\n\n"
        f"===Requirements===\n{output_format.replace('{character}', character)}\n\n"
    )


def prompts_hash() -> str:
    """sha256 of every prompt text here: recorded in results so runs with other prompts differ."""
    h = hashlib.sha256()
    parts = [
        JUDGE_TEMPLATE,
        JUDGE_EXAMPLE_COSER,
        JUDGE_EXAMPLE_HER,
        ENVIRONMENT_TEMPLATE,
        NSP_TEMPLATE,
        NSP_RULES_HER,
        FIX_JSON_PROMPT,
        _HER_EVAL_FORMAT,
        _HER_EVAL_FORMAT_NO_PLAN,
        *MODEL_ROLES,
    ]
    for name, (brief, criteria) in DIMENSIONS.items():
        parts += [name, brief, criteria]
    for p in parts:
        h.update(p.encode("utf-8") + b"\0")
    return h.hexdigest()
