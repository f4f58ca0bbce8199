#!/bin/bash
# dfq on a GPU machine (the device tool's H100 / H200): the CUDA path end to end, and where the
# synthesis loop's time goes. Run from the repository root, with the shared files copied into a
# git-ignored folder DATA that travels with the call (carry):
#   DATA/cifar10-resnet20.th  DATA/cifar10-test-lossless-846.npz  DATA/imagenet-efficientnet-lite0.pth
#
#   bash tools/bench_gpu.sh e2e DATA          # resnet20 --bits 4 (R20=0 skips it), then Lite0 --bits 4, then --bits 8
#                                             # and W4A8 on its set, while time is left. Lite0 takes
#                                             # --recipe $LITE0_RECIPE (default imagenet-cpu, the
#                                             # CPU recipe on the GPU; LITE0_RECIPE=imagenet for the
#                                             # GPU one: --bits 4 in 169 s on an H200, 2026-11-27)
#   bash tools/bench_gpu.sh variants DATA 'b128:--recipe imagenet' 'b32:--recipe imagenet --set synth.batch_size=32'
#                                             # Lite0 --bits 4 once per NAME:OPTIONS, each whole
#                                             # (synthesis, distillation, export); NAME.onnx and logs
#                                             # come back, to be scored with dfq evaluate
#   bash tools/bench_gpu.sh forward           # bare Lite0 forward+backward, batch 32: fp32 / bf16,
#                                             # contiguous / channels_last
#   bash tools/bench_gpu.sh synth-parts DATA  # 100 synthesis steps of one Lite0 batch, parts removed
#   bash tools/bench_gpu.sh profile DATA      # Lite0 synthesis steps/s at batch 32, 64, 128 and
#                                             # its ops by GPU time (tools/profile_synth.py)
#
# Results go to $OUT (the device tool's folder) or ./runs/gpu; each step has its own timeout so
# that whatever finished comes back inside the device call's 10-minute limit.
set -u
MODE=${1:?e2e, variants, forward, synth-parts or profile}
W=${2:-gpu_data}
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
T0=$(date +%s)
DEADLINE=$((T0 + ${BUDGET_S:-555}))
left() { echo $((DEADLINE - $(date +%s))); }
LITE0="timm:tf_efficientnet_lite0 --weights $W/imagenet-efficientnet-lite0.pth"
LITE0_RECIPE=${LITE0_RECIPE:-imagenet-cpu}

e2e() {
  local L=/tmp/logs
  mkdir -p $L
  pack() {
    for d in r20 l4 l8 l48; do
      for f in report.json report.md recipe.yaml; do
        [ -f /tmp/$d/$f ] && cp /tmp/$d/$f $L/$d-$f
      done
    done
    tar czf "$OUT/logs.tgz" -C $L .
  }
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    nproc
    python3 -c "import torch,timm,onnxruntime,onnx;print(torch.__version__,timm.__version__,onnxruntime.__version__,onnx.__version__,torch.cuda.get_device_name())"
  } >$L/gpu.txt 2>&1
  local s rc
  if [ "${R20:-1}" = 1 ]; then
    s=$(date +%s)
    timeout 150 python3 -m dfq quantize cifar10_resnet20 --weights $W/cifar10-resnet20.th --bits 4 \
      --eval-data $W/cifar10-test-lossless-846.npz --out /tmp/r20 >$L/r20.log 2>&1
    rc=$?
    echo "r20 rc=$rc wall=$(($(date +%s) - s))" >>$L/gpu.txt
    pack
    # A crash (not a timeout) on the small model ends the call early, leaving device time to rerun.
    if [ $rc -ne 0 ] && [ $rc -ne 124 ]; then return; fi
  fi
  s=$(date +%s)
  timeout $(($(left) - 20)) python3 -m dfq quantize $LITE0 --recipe "$LITE0_RECIPE" --bits 4 \
    --out /tmp/l4 >$L/l4.log 2>&1
  echo "l4 rc=$? wall=$(($(date +%s) - s))" >>$L/gpu.txt
  pack
  [ -f /tmp/l4/model.onnx ] && cp /tmp/l4/model.onnx "$OUT/l4.onnx"
  for spec in "l8:--bits 8" "l48:--wbits 4 --abits 8"; do
    local d=${spec%%:*} opts=${spec#*:}
    [ -f /tmp/l4/calibration.npz ] || break
    [ "$(left)" -gt 90 ] || break
    s=$(date +%s)
    # shellcheck disable=SC2086
    timeout $(($(left) - 15)) python3 -m dfq quantize $LITE0 --recipe "$LITE0_RECIPE" $opts \
      --calib /tmp/l4/calibration.npz \
      --out /tmp/$d >$L/$d.log 2>&1
    echo "$d rc=$? wall=$(($(date +%s) - s))" >>$L/gpu.txt
    pack
    [ -f /tmp/$d/model.onnx ] && cp /tmp/$d/model.onnx "$OUT/$d.onnx"
  done
  # (2026-11-27: l8.onnx did not come back although its run passed its export check)
  ls -la /tmp/l4 /tmp/l8 /tmp/l48 "$OUT" >>$L/gpu.txt 2>&1
  pack
}

variants() {
  local L=/tmp/logs spec d opts s
  mkdir -p $L
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >$L/gpu.txt 2>&1
  for spec in "$@"; do
    d=${spec%%:*}
    opts=${spec#*:}
    [ "$(left)" -gt 60 ] || break
    s=$(date +%s)
    # shellcheck disable=SC2086
    timeout $(($(left) - 10)) python3 -m dfq quantize $LITE0 --bits 4 $opts --out /tmp/$d \
      >$L/$d.log 2>&1
    echo "$d rc=$? wall=$(($(date +%s) - s)) opts=$opts" >>$L/gpu.txt
    for f in report.json report.md recipe.yaml; do
      [ -f /tmp/$d/$f ] && cp /tmp/$d/$f $L/$d-$f
    done
    [ -f /tmp/$d/model.onnx ] && cp /tmp/$d/model.onnx "$OUT/$d.onnx"
    tar czf "$OUT/logs.tgz" -C $L .
  done
}

forward() {
  timeout 100 python3 - <<'PY' 2>&1 | tee "$OUT/forward.txt"
import time

import timm
import torch

m = timm.create_model("tf_efficientnet_lite0").cuda().eval().requires_grad_(False)


def run(cl, amp, n=20):
    fmt = torch.channels_last if cl else torch.contiguous_format
    mm = m.to(memory_format=fmt)
    x = torch.randn(32, 3, 224, 224, device="cuda").contiguous(memory_format=fmt)
    x.requires_grad_(True)
    for i in range(n + 5):
        if i == 5:
            torch.cuda.synchronize()
            t = time.perf_counter()
        with torch.autocast("cuda", torch.bfloat16, enabled=amp):
            y = mm(x).float()
        y.sum().backward()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1000


for cl in (False, True):
    for amp in (False, True):
        torch.backends.cudnn.benchmark = False
        a = run(cl, amp)
        torch.backends.cudnn.benchmark = True
        b = run(cl, amp)
        print(f"channels_last={cl} bf16={amp}: {a:.1f} ms, cudnn.benchmark {b:.1f} ms", flush=True)
PY
}

synth_parts() {
  local S="python3 -m dfq synthesize $LITE0 -n 32 --set synth.iters=100 --quiet"
  local v n o
  for v in "default:" "pixels:--param pixels" "noadv:--set synth.adv_weight=0" \
    "norel:--set synth.relation=false --set synth.adv_weight=0 --param pixels"; do
    n=${v%%:*}
    o=${v#*:}
    # shellcheck disable=SC2086
    timeout 40 $S $o --out /tmp/v$n 2>&1 | tail -1 | sed "s/^/$n: /"
  done 2>&1 | tee "$OUT/synth-parts.txt"
}

profile() {
  timeout $(($(left) - 10)) python3 tools/profile_synth.py --model timm:tf_efficientnet_lite0 \
    --weights $W/imagenet-efficientnet-lite0.pth --batch-sizes 32,64,128 --steps 50 --profile \
    --out "$OUT" 2>&1 | tee "$OUT/profile.log"
}

case $MODE in
  e2e) e2e ;;
  variants) shift 2; variants "$@" ;;
  forward) forward ;;
  synth-parts) synth_parts ;;
  profile) profile ;;
  *) echo "bench_gpu.sh: unknown mode '$MODE' (e2e, variants, forward, synth-parts or profile)" >&2; exit 2 ;;
esac
