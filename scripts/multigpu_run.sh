#!/usr/bin/env bash
# Issue #17 on one host with N GPUs (2 H100s; 4 where lent): run from the repository root.
#
#   scripts/multigpu_run.sh bench   # bench-ci on GPU 0, then spread over N GPUs: wall time and per-case medians
#   scripts/multigpu_run.sh flux    # Flux step latency, all-to-all and scaling efficiency, 2048 and 4096, at
#                                   # 1..N GPUs (Ulysses): FA4 and cuDNN dense, and HilbertA (our Triton
#                                   # kernel and HilbertA as dense FA4 pieces)
#   scripts/multigpu_run.sh         # both (each part stays under 10 minutes on H100s)
#
# Environment: GPUS (default: all GPUs nvidia-smi lists), OUT (default results/multigpu-<UTC time>),
# PYTHON (default python3), DENSE (default fa4_dense,sdpa_cudnn: FA4 is the fastest dense kernel on Hopper;
# where it cannot run its rows say "unavailable" with the reason and cuDNN SDPA is the dense reference; with
# DENSE=fa4_dense alone, sdpa_cudnn runs in its place and its rows say so), HILBERTA (default
# hilberta,hilberta_fa4split), STEP_REPEATS (default 3).
# NVLink multicast stays off.
set -euo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
PY=${PYTHON:-python3}
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
OUT=${OUT:-results/multigpu-$(date -u +%Y%m%d-%H%M%S)}
DENSE=${DENSE:-fa4_dense,sdpa_cudnn}
HILBERTA=${HILBERTA:-hilberta,hilberta_fa4split}
PART=${1:-all}
mkdir -p "$OUT"
nvidia-smi -L | tee "$OUT/cards.txt"

now() { date +%s.%N; }

bench() {
  local t0 t1 t2
  t0=$(now)
  "$PY" -m harness run bench-ci --out "$OUT/bench-ci-1gpu" --device cuda:0 --no-progress || true
  t1=$(now)
  "$PY" -m harness run bench-ci --out "$OUT/bench-ci-${GPUS}gpu" --gpus "$GPUS" --no-progress || true
  t2=$(now)
  "$PY" - "$OUT" "$GPUS" "$t0" "$t1" "$t2" <<'PYEOF' | tee "$OUT/bench-ci-compare.txt"
import sys
from harness.core.results import load_results
out, gpus, t0, t1, t2 = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
one, many = load_results(f"{out}/bench-ci-1gpu"), load_results(f"{out}/bench-ci-{gpus}gpu")
wall1, wallN = t1 - t0, t2 - t1
print(f"bench-ci wall time: 1 GPU {wall1:.0f} s, {gpus} GPUs {wallN:.0f} s, ratio {wallN / wall1:.2f} (goal <= 0.60)")
print(f"complete: 1 GPU {one.get('complete')}, {gpus} GPUs {many.get('complete')}")
plan = many["env"].get("spread") or {}
for card in plan.get("cards", []):
    print(f"  gpu{card['index']}: estimated {card.get('estimated_s', 0):.0f} s: {', '.join(card['units'])}")
if plan.get("unanchored"):
    print(f"  timed away from their resolution's dense anchor: {', '.join(plan['unanchored'])}")
base = {r["case"]: r for r in one["cases"]}
worst = 0.0
for row in many["cases"]:
    ref = base.get(row["case"])
    if not (ref and ref.get("median_ms") and row.get("median_ms")):
        print(f"  {row['case']}: {row['status']} (1 GPU: {ref and ref['status']}) {row.get('reason') or ''}")
        continue
    diff = 100 * (row["median_ms"] / ref["median_ms"] - 1)
    worst = max(worst, abs(diff))
    print(f"  {row['case']:<45} gpu{row.get('device_index')}  {ref['median_ms']:.4g} -> {row['median_ms']:.4g} ms"
          f"  {diff:+.2f} %")
print(f"largest median difference {worst:.2f} % (goal <= 3 %)")
PYEOF
}

flux() {
  "$PY" -m harness e2e --gpus "$GPUS" --resolutions 2048x2048,4096x4096 --methods "$DENSE,$HILBERTA" \
    --skip-denoise --step-repeats "${STEP_REPEATS:-3}" --no-report --out "$OUT/e2e-sp-${GPUS}gpu" \
    | tee "$OUT/e2e-sp-${GPUS}gpu.txt"
}

case "$PART" in
  bench) bench ;;
  flux) flux ;;
  all) bench; flux ;;
  *) echo "usage: $0 [bench|flux|all]" >&2; exit 2 ;;
esac
echo "outputs: $OUT"
