#!/usr/bin/env bash
# The suite on a GPU, as one script: the gpu-marked tests, the toy sweep in fp16 on CUDA (its images
# come back for comparison with a CPU run), `suite bench` of the real architectures with random
# weights (eager, then compiled) against diffusers' pipelines, and a two-process torchrun sweep.
#
# Every part has a time limit inside one overall deadline, most important parts first, so a slow
# part costs only the parts after it. Logs, the bench tables and the toy run are packed into
# $OUT/gpu-check.tgz at the end; $OUT/log.txt is the running log.
#
#   OUT=/tmp/check scripts/gpu-check.sh                  # on a GPU machine
#   DEVICE=cpu QUICK=1 OUT=/tmp/check scripts/gpu-check.sh   # rehearsal on a CPU with tiny presets
set -u
OUT=${OUT:-results/gpu-check}
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-450}           # seconds for everything
PYTHON=${PYTHON:-python3}
WORK=${WORK:-/tmp/gpu-check}
if [ "${QUICK:-0}" = 1 ]; then
    PRESETS="tiny-latent tiny-cascaded"; COMPILED="tiny-latent"; TOY=experiments/toy-quick.yaml; DTYPE=fp32; STEPS=3
else
    PRESETS="sd15 sd21-base if-xl"; COMPILED="sd15 if-xl sd21-base"; TOY=experiments/toy.yaml; DTYPE=fp16; STEPS=10
fi
mkdir -p "$OUT" "$WORK"
rm -rf "$WORK"/*
exec > >(tee -a "$OUT/log.txt") 2>&1

log() { echo "[gpu-check +${SECONDS}s] $*"; }
part() {  # part NAME LIMIT COMMAND...: run with min(LIMIT, time left), log to $WORK/NAME.log
    local name=$1 limit=$2; shift 2
    local left=$((DEADLINE - SECONDS))
    if [ "$left" -lt 20 ]; then log "skip $name: ${left}s left"; echo "$name skipped" >> "$WORK/parts.txt"; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    log "start $name (limit ${limit}s)"
    local began=$SECONDS
    timeout --kill-after=5 "$limit" "$@" > "$WORK/$name.log" 2>&1
    local rc=$?
    log "end $name rc=$rc after $((SECONDS - began))s"; tail -n 25 "$WORK/$name.log"
    echo "$name rc=$rc seconds=$((SECONDS - began))" >> "$WORK/parts.txt"
}

log "device $DEVICE, presets $PRESETS, deadline ${DEADLINE}s"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
$PYTHON -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
export PYTHONUNBUFFERED=1 SUITE_CACHE="$WORK/cache"

part gpu-tests 150 $PYTHON -m pytest -q -m gpu -p no:cacheprovider tests/toy/test_models.py tests/analysis/test_bench.py
part bench-eager 200 $PYTHON -m suite bench $PRESETS --device "$DEVICE" --steps "$STEPS" --repeats 3 --out "$WORK/bench"
part toy-sweep 200 $PYTHON -m suite sweep "$TOY" --device "$DEVICE" --dtype "$DTYPE" --out "$WORK/toy-$DEVICE" --quiet
# the same sweep's generation in fp32 (no metrics): device-to-device agreement without the dtype change
$PYTHON -c "import sys, yaml; s = yaml.safe_load(open(sys.argv[1])); [s.pop(k, None) for k in ('metrics', 'evaluation')]; yaml.safe_dump(s, open(sys.argv[2], 'w'))" "$TOY" "$WORK/toy-fp32.yaml"
part toy-sweep-fp32 90 $PYTHON -m suite sweep "$WORK/toy-fp32.yaml" --device "$DEVICE" --dtype fp32 --out "$WORK/toy-$DEVICE-fp32" --quiet
part torchrun 100 $PYTHON -m torch.distributed.run --nproc_per_node 2 -m suite sweep experiments/toy-quick.yaml \
    --device "$DEVICE" --out "$WORK/torchrun" --quiet
for preset in $COMPILED; do
    part "bench-compiled-$preset" 150 $PYTHON -m suite bench "$preset" --device "$DEVICE" --steps "$STEPS" --repeats 3 \
        --compile --out "$WORK/bench"
done

log "packing"
cp -r "$WORK/bench" "$WORK/bench-tables" 2>/dev/null
(cd "$WORK" && find . -maxdepth 1 -name "toy-*" -type d | while read -r run; do
    tar rf "$WORK/toy-run.tar" --exclude=report --exclude=evaluation "$run"; done)
tar czf "$OUT/gpu-check.tgz" -C "$WORK" --exclude=cache --exclude="toy-*" --exclude=torchrun/images . 2>/dev/null
# at most 16 MB a file comes back: the images travel in pieces (cat toy-run.tgz.* | tar xz)
[ -f "$WORK/toy-run.tar" ] && gzip -c "$WORK/toy-run.tar" | split -b 15m - "$OUT/toy-run.tgz."
ls -la "$OUT"
log "done"
