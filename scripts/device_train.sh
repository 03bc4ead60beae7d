#!/usr/bin/env bash
# Trains the head-and-neck organ model's candidates side by side on a lent GPU, from a pack (README, "Training
# where the data is not"): the device time of a session is short, and one of these small models does not fill
# an H100, so three runs share it for the same minutes.
#
#   here:   bash scripts/device_train.sh prepare        -> .packs/hn_oars_3mm (the pack, 39 MiB, from OpenKBP's
#                                                          training split, fetched as ../shared/data/MANIFEST.md
#                                                          says), and the device tool's call to make
#   there:  bash scripts/device_train.sh run [MINUTES]  -> $OUT/<candidate>.tar (a model folder) and
#                                                          $OUT/<candidate>.log, for each candidate below
#   here:   bash scripts/device_train.sh unpack FILES_AT DEST -> DEST/<candidate>/, then the commands that
#                                                          choose among them on validation patients
#
# The candidates, each from promptseg-hn-oars (its card says how it was trained) with the same pack, loss and
# schedule (cosine, ending at MINUTES), batch 8, learning rate 3e-4:
#   plain  the bundled network as it is, 48^3 crops (issue 13)
#   wide   the bundled network widened to 16 48 96 192 channels (`promptseg widen`, the same masks at first),
#          64^3 crops (issue 13: capacity and context the CPU could not train)
#   hints  the bundled network with the drawn-slice input (`--hints`, the organ prior of `promptseg fill`,
#          issue 14), 48^3 crops
# PY (default python3) is the interpreter, WORK (default /tmp/device_train) the folder of the models and their
# checkpoints there; DEVICE (default cuda), BATCH (default 8) and PACK (default .packs/hn_oars_3mm) exist for a
# rehearsal on the CPU (Testing/Python/test_pack.py runs one).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python3}"
DEVICE="${DEVICE:-cuda}"
BATCH="${BATCH:-8}"
PACK="${PACK:-.packs/hn_oars_3mm}"
WORK="${WORK:-/tmp/device_train}"
BASE=PromptSegLib/models/promptseg-hn-oars
CANDIDATES=(plain wide hints)

options() {  # the trainer's options of one candidate
  local common=(--batch-size "$BATCH" --lr 3e-4 --device "$DEVICE" --name promptseg-hn-oars)
  case "$1" in
    plain) echo "${common[@]} --init $BASE --patch-size 48 48 48 --seed 61 --version 0.8.0-plain" ;;
    wide) echo "${common[@]} --init $WORK/wide-init --patch-size 64 64 64 --seed 62 --version 0.8.0-wide" ;;
    hints) echo "${common[@]} --init $BASE --hints --patch-size 48 48 48 --seed 63 --version 0.8.0-hints" ;;
  esac
}

case "${1:-}" in
  prepare)
    if [ ! -f "$PACK/pack.json" ]; then
      .venv/bin/promptseg pack Resources/Training/hn_oars.json -o "$PACK" --spacing-mm 3 --init "$BASE"
    fi
    echo "device tool: run with carry [\"$PACK\"], timeout_s 600, command:"
    echo "  bash scripts/device_train.sh run 6.5"
    echo "then at once, on the warm machine, the command Testing/benchmarks/device_kit.py prints (issue 15)"
    ;;
  run)
    minutes="${2:-6.5}"
    out="${OUT:?OUT (the folder whose files come back) is not set}"
    mkdir -p "$WORK"
    [ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    "$PY" -m PromptSegLib.models.widen "$BASE" -o "$WORK/wide-init" --widths 16 48 96 192 --version 0.8.0-wide-init \
      >/dev/null
    pids=()
    for name in "${CANDIDATES[@]}"; do
      # shellcheck disable=SC2046  # the options are words
      "$PY" -m PromptSegLib.train.pack_training "$PACK" -o "$WORK/$name" --minutes "$minutes" --steps 1000000 \
        --checkpoints "$WORK/$name.work" $(options "$name") > "$out/$name.log" 2>&1 &
      pids+=($!)
    done
    if [ "$DEVICE" = cuda ]; then  # how busy the GPU was, every 15 s, while they train
      while kill -0 "${pids[0]}" 2>/dev/null; do
        nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader >> "$out/gpu.log" || true
        sleep 15
      done
    fi
    status=0
    for i in "${!pids[@]}"; do
      name="${CANDIDATES[$i]}"
      if wait "${pids[$i]}"; then
        tar -cf "$out/$name.tar" -C "$WORK" "$name"
        echo "$name: $(tail -n 1 "$WORK/$name.work/log.csv" | cut -d, -f1) steps; $out/$name.tar"
      else
        status=1
        echo "$name failed:"; tail -n 5 "$out/$name.log"
      fi
    done
    exit $status
    ;;
  unpack)
    files="${2:?the folder that holds the files the device tool brought back}"
    dest="${3:?a new folder for the models}"
    mkdir -p "$dest"
    for name in "${CANDIDATES[@]}"; do
      if [ -f "$files/$name.tar" ]; then
        tar -xf "$files/$name.tar" -C "$dest"
        echo ".venv/bin/promptseg tune Resources/Training/hn_oars.json --model $dest/$name --overlaps 0.5 --threads 2"
      fi
    done
    echo "then: .venv/bin/python Testing/benchmarks/choose_fill_reach.py --prior-models promptseg-hn-oars" \
         "$dest/hints --groups openkbp --counts 1 2 3 4 6 8 --threads 2"
    ;;
  *)
    echo "usage: bash scripts/device_train.sh prepare | run [MINUTES] | unpack FILES_AT DEST" >&2
    exit 2
    ;;
esac
