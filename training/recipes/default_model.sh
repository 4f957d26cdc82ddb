#!/usr/bin/env bash
# her_sdk's default adapter (her_sdk/models/her-gemma3-270m-lora.gguf), made end to end on a CPU:
# CoSER files -> HER samples -> samples shaped like game turns -> LoRA SFT of the embedded
# Gemma-3-270M -> GRPO of the same adapter against rewards a CPU computes -> GGUF adapter ->
# her eval (single lines with `quick`, multi-turn scenes with `play`).
#
#   training/recipes/default_model.sh [STAGE...]
#       stages, in order: data shape sft rl export eval   (default: all of them)
#
# Each stage reads what the one before wrote under $RUN and can be run on its own. A stage whose
# result is already there is skipped (FORCE=1 redoes it); a stopped `sft` or `rl` stage resumes
# from its latest checkpoint (every 20 and 10 steps) when run again.
#
# Environment: COSER (the CoSER folder: King_Lear.json, Othello.json, books/, sft_sharegpt.json,
# example_test_set.json; default ../shared/data/coser), RUN (work folder, default
# runs/default_model; everything generated goes there, git-ignored: the data is never committed),
# SFT_STEPS (default 200), RL_STEPS (default 60), HER (the `her` command), PY.
# Needs the `train`, `export`, `llama` and `eval` extras (`make .venv/.test-installed`).
#
# The recipe uses no teacher model, so turns are trained without a plan (`<system_thinking>`):
# the adapter is exported with --no-plan (metadata her.plan = false) and characters on it skip
# the plan. With a teacher, `her data synth-plans` on the shaped files adds plans and the
# same recipe trains with them (export without --no-plan).
set -euo pipefail

cd "$(dirname "$0")/../.."
COSER=${COSER:-../shared/data/coser}
RUN=${RUN:-runs/default_model}
SFT_STEPS=${SFT_STEPS:-${MAX_STEPS:-200}}
RL_STEPS=${RL_STEPS:-60}
HER=${HER:-.venv/bin/her}
PY=${PY:-.venv/bin/python}
FORCE=${FORCE:-0}
DATA=$RUN/data
SFT=$RUN/sft
RL=$RUN/rl
BASE=$RUN/base-hf                    # the embedded GGUF, dequantized, as a transformers folder
ADAPTER=$RUN/her-gemma3-270m-lora.gguf
STAGES=${*:-data shape sft rl export eval}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

has() { [[ " $STAGES " == *" $1 "* ]]; }
done_already() {  # done_already FILE STAGE: true (and says so) when FILE exists and not FORCE
  if [[ "$FORCE" != 1 && -e "$1" ]]; then echo "stage $2: $1 exists, skipped (FORCE=1 redoes it)"; return 0; fi
  return 1
}
resume_flag() {  # resume_flag DIR: the override that resumes from DIR's latest checkpoint
  if compgen -G "$1/checkpoint-*" > /dev/null; then echo "resume_from_checkpoint=latest"; fi
}

if has data && ! done_already "$DATA/all.jsonl" data; then
  mkdir -p "$DATA"
  # One JSONL per source; 10 % of the scenes of each held out (split "eval"), CoSER's own test
  # scenes left out entirely, profiles cut to 400 characters so that samples stay short.
  for f in "$COSER"/King_Lear.json "$COSER"/Othello.json "$COSER"/books/*.json; do
    "$HER" data convert coser "$f" --out "$DATA/coser_$(basename "$f" .json).jsonl" \
      --eval-ratio 0.1 --exclude "$COSER/example_test_set.json" --max-profile-chars 400
  done
  "$HER" data convert sharegpt "$COSER/sft_sharegpt.json" --out "$DATA/sharegpt.jsonl" \
    --eval-ratio 0.1 --max-profile-chars 400
  cat "$DATA"/coser_*.jsonl "$DATA"/sharegpt.jsonl > "$DATA/all.jsonl.tmp"
  mv "$DATA/all.jsonl.tmp" "$DATA/all.jsonl"
  # A test set in the CoSER schema from held-out scenes (one per book, first 8 lines, profiles
  # cut as in training): what `her eval quick` measures base and tuned on.
  "$PY" - "$COSER" "$DATA" "$RUN/heldout_test_set.json" <<'EOF'
import json, sys
from pathlib import Path
coser, data, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
held = {}
for line in (data / "all.jsonl").open():
    r = json.loads(line)
    if r["source"] == "coser" and r["split"] == "eval":
        held.setdefault(r["book"], set()).add(r["scene"])
records = []
for f in sorted([coser / "King_Lear.json", coser / "Othello.json", *coser.glob("books/*.json")]):
    book = f.stem.replace("_", " ")
    keys = held.get(book, set())
    plots = json.loads(f.read_text())
    for p in plots["plots"]:
        for conv in p["conversation"]:
            key = f"{book}#{p.get('i_p')}#{conv.get('i_c')}"
            speakers = {d["character"] for d in conv["dialogues"]} - {"Environment"}
            if key not in keys or len(speakers) < 2 or len(conv["dialogues"]) < 6:
                continue
            profiles = {n: (plots["character_datasets"].get(n) or {}).get("profile", "")[:400]
                        for n in speakers}
            records.append({
                "book": book, "i_p": p.get("i_p"), "i_c": conv.get("i_c"),
                "plot": {"summary": p.get("summary", ""), "i_p": p.get("i_p"),
                         "key_characters": []},
                "scenario": conv.get("scenario", ""), "topic": conv.get("topic", ""),
                "key_characters": conv.get("key_characters", []),
                "speaking_characters_w_env": sorted(speakers) + ["Environment"],
                "major_characters": sorted(speakers),
                "character_profiles": profiles,
                "dialogues": conv["dialogues"][:8],
            })
            break
        else:
            continue
        break
out.write_text(json.dumps(records, ensure_ascii=False, indent=1))
print(f"{len(records)} held-out records -> {out}")
EOF
fi

if has shape && ! done_already "$DATA/portions/rl.jsonl" shape; then
  # Game-sized targets: at most one thought, one action and one speech of <= 3 sentences and
  # <= 40 words; turns whose speech narrates or quotes are dropped (`her data shape`). Then the
  # scenes go whole into an SFT portion and an RL portion (HER's 8 %), so RL never rewards a
  # prompt whose very turn SFT copied.
  "$HER" data shape "$DATA/all.jsonl" --out "$DATA/shaped.jsonl" \
    --max-actions 1 --max-sentences 3 --max-speech-words 40
  "$HER" data split "$DATA/shaped.jsonl" --out "$DATA/portions" --sft 0.92 --rm 0 --rl 0.08 --test 0
fi

if has sft && ! done_already "$SFT/her_sft.json" sft; then
  # LoRA r=4 on all linear layers, ChatML, completion-only loss, samples <= 640 tokens, batch 1
  # x 2 accumulation; checkpoints every 20 steps (a stopped run resumes from the latest one).
  "$HER" train sft --config training/configs/sft_gemma3_270m_default.yaml \
    "train_file=$DATA/portions/sft.jsonl" "output_dir=$SFT" "max_steps=$SFT_STEPS" \
    $(resume_flag "$SFT")
fi

if has rl && ! done_already "$RL/her_rl.json" rl; then
  # GRPO of the SFT adapter itself (init_adapter), on the RL portion's prompts, against the game
  # rewards of training/rewards.py with the weights in the config; no judge model. Checkpoints
  # every 10 steps; a stopped run resumes.
  "$HER" train rl --config training/configs/rl_gemma3_270m_game.yaml \
    "train_file=$DATA/portions/rl.jsonl" "init_adapter=$SFT" "output_dir=$RL" \
    "max_steps=$RL_STEPS" $(resume_flag "$RL")
fi

if has export && ! done_already "$ADAPTER" export; then
  # The base the adapter was trained on, as a transformers folder (export's --base reads one).
  if [[ ! -e "$BASE/config.json" ]]; then
    "$PY" - "$BASE" <<'EOF'
import sys
from her_sdk.training.common import (EMBEDDED_GEMMA, clear_gguf_markers, load_causal_lm,
                                     load_tokenizer, resolve_model)
spec = resolve_model(EMBEDDED_GEMMA)
model = load_causal_lm(spec, dtype="float32")
clear_gguf_markers(model)
model.save_pretrained(sys.argv[1])
load_tokenizer(spec, "chatml").save_pretrained(sys.argv[1])
EOF
  fi
  if [[ ! -e "$RUN/base-f32.gguf" ]]; then
    "$HER" export gguf "$BASE" --out "$RUN/base-f32.gguf" --type f32 --no-verify
  fi
  # The RL output when that stage ran, else the SFT adapter; verified against PyTorch: the f32
  # base GGUF + adapter in llama.cpp vs the merged model.
  FINAL=$SFT; [[ -e "$RL/her_rl.json" ]] && FINAL=$RL
  "$HER" export gguf-lora "$FINAL" --base "$BASE" --out "$ADAPTER" --no-plan \
    --base-gguf "$RUN/base-f32.gguf"
  ls -l "$ADAPTER"
fi

if has eval; then
  # Single lines (`quick`, the CoSER held-out scenes) and multi-turn scenes (`play`, the
  # held-out game scenes in benchmarks/heldout_scenes.json, never used to train or tune):
  # the bare base (few-shot), today's shipped adapter, and the new one; then side by side.
  # `play` runs the embedded model as `load_model()` ships it (TurnShape.GAME, DRY 0.8) with
  # each adapter: what a game gets is what decides.
  GGUF=$("$PY" -c "from her_sdk._model import default_model_path; print(default_model_path())")
  SHIPPED=her_sdk/models/her-gemma3-270m-lora.gguf
  for who in base:none shipped:$SHIPPED new:$ADAPTER; do
    name=${who%%:*}; adapter=${who#*:}
    "$HER" eval quick "$RUN/heldout_test_set.json" --model "$GGUF" --adapter "$adapter" \
      --lines 3 --n-ctx 4096 --grammar --out "$RUN/eval/quick-$name"
    "$HER" eval play --scenes benchmarks/heldout_scenes.json --adapter "$adapter" \
      --out "$RUN/eval/play-$name"
  done
  "$HER" eval compare "$RUN/eval/quick-shipped" "$RUN/eval/quick-new" --markdown
  "$HER" eval compare "$RUN/eval/play-base" "$RUN/eval/play-shipped" --markdown
  "$HER" eval compare "$RUN/eval/play-shipped" "$RUN/eval/play-new" --markdown
fi
