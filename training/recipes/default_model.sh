#!/usr/bin/env bash
# The exact commands that made her_sdk's default adapter (her_sdk/models/her-gemma3-270m-lora.gguf):
# CoSER files -> HER samples -> LoRA SFT of the embedded Gemma-3-270M -> GGUF adapter -> her eval.
#
#   training/recipes/default_model.sh [STAGE...]     # stages: data train export eval (default: all)
#
# Environment: COSER (the CoSER folder: King_Lear.json, Othello.json, books/, sft_sharegpt.json,
# example_test_set.json; default ../shared/data/coser), RUN (work folder, default
# runs/default_model; everything generated goes there, git-ignored: the data is never committed),
# MAX_STEPS (default 200: about an hour on 2 quiet CPU cores), HER (the `her` command).
# Needs the `train`, `export` and `llama` extras (`make .venv/.test-installed`).
#
# The recipe uses no teacher model, so turns are trained without a plan (`<system_thinking>`):
# the adapter is exported with --no-plan (metadata her.plan = false) and characters on it skip
# the plan. With a teacher, `her data synth-plans` on the converted files adds plans and the
# same recipe trains with them (export without --no-plan).
set -euo pipefail

cd "$(dirname "$0")/../.."
COSER=${COSER:-../shared/data/coser}
RUN=${RUN:-runs/default_model}
MAX_STEPS=${MAX_STEPS:-200}
HER=${HER:-.venv/bin/her}
PY=${PY:-.venv/bin/python}
DATA=$RUN/data
SFT=$RUN/sft
BASE=$RUN/base-hf                    # the embedded GGUF, dequantized, as a transformers folder
ADAPTER=$RUN/her-gemma3-270m-lora.gguf
STAGES=${*:-data train export eval}

has() { [[ " $STAGES " == *" $1 "* ]]; }

if has data; then
  mkdir -p "$DATA"
  # One JSONL per source; 10 % of the scenes of each held out (split "eval"), CoSER's own test
  # scenes left out entirely, profiles cut to 400 characters so that samples stay short.
  for f in "$COSER"/King_Lear.json "$COSER"/Othello.json "$COSER"/books/*.json; do
    "$HER" data convert coser "$f" --out "$DATA/coser_$(basename "$f" .json).jsonl" \
      --eval-ratio 0.1 --exclude "$COSER/example_test_set.json" --max-profile-chars 400
  done
  "$HER" data convert sharegpt "$COSER/sft_sharegpt.json" --out "$DATA/sharegpt.jsonl" \
    --eval-ratio 0.1 --max-profile-chars 400
  cat "$DATA"/coser_*.jsonl "$DATA"/sharegpt.jsonl > "$DATA/all.jsonl"
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

if has train; then
  # LoRA r=4 on all linear layers, ChatML, completion-only loss, samples <= 640 tokens, batch 1
  # x 2 accumulation; checkpoints every 20 steps (a stopped run resumes from the latest one).
  resume=()
  if compgen -G "$SFT/checkpoint-*" > /dev/null; then resume=(resume_from_checkpoint=latest); fi
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
  "$HER" train sft \
    --config training/configs/sft_gemma3_270m_default.yaml \
    "train_file=$DATA/all.jsonl" "output_dir=$SFT" "max_steps=$MAX_STEPS" "${resume[@]}"
fi

if has export; then
  # The base the adapter was trained on, as a transformers folder (export's --base reads one).
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
  "$HER" export gguf "$BASE" --out "$RUN/base-f32.gguf" --type f32 --no-verify
  # Verified against PyTorch: the f32 base GGUF + adapter in llama.cpp vs the merged model.
  "$HER" export gguf-lora "$SFT" --base "$BASE" --out "$ADAPTER" --no-plan \
    --base-gguf "$RUN/base-f32.gguf"
  ls -l "$ADAPTER"
fi

if has eval; then
  # Base + few-shot (the bare embedded model) vs base + adapter (ChatML, no plan), on the
  # held-out scenes, without and with the grammar; then side by side.
  GGUF=$("$PY" -c "from her_sdk._model import default_model_path; print(default_model_path())")
  for g in grammar no-grammar; do
    "$HER" eval quick "$RUN/heldout_test_set.json" --model "$GGUF" --adapter none \
      --lines 3 --n-ctx 4096 --"$g" --out "$RUN/eval/base-$g"
    "$HER" eval quick "$RUN/heldout_test_set.json" --model "$GGUF" --adapter "$ADAPTER" \
      --lines 3 --n-ctx 4096 --"$g" --out "$RUN/eval/tuned-$g"
    "$HER" eval compare "$RUN/eval/base-$g" "$RUN/eval/tuned-$g" --markdown
  done
fi
