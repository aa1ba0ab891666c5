#!/usr/bin/env bash
# One device call (H100/H200): the paper-scale benchmark, then a long-budget run of the ablation study's goal pair.
#
#   bash bench/gpu_session.sh            # on the device machine; results under $OUT (or ./gpu_out)
#
# Environment: PAPER_TIMEOUT / STUDY_TIMEOUT (seconds; PAPER_TIMEOUT=0 skips the benchmark), PAPER_ARGS (arguments of bench/gpu_paper_scale.py),
# STUDY_ARGS (arguments of studies/ablate_synthetic), STUDY_DEVICE (default cuda),
# SHARED (a study's shared/ folder — tokenizer and pretrained tower — to reuse, so both machines train on the same).
# Python packages missing from the device image travel as wheels in .whl/ (see /work/.library/device/README.md).
set -u
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$OUT/device.txt"
python3 -c "import torch, rsfuse; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/device.txt"

if [ "${PAPER_TIMEOUT:-240}" != 0 ]; then
  start=$(date +%s)
  # shellcheck disable=SC2086
  timeout "${PAPER_TIMEOUT:-240}" python3 bench/gpu_paper_scale.py ${PAPER_ARGS:-} > "$OUT/paper_scale.jsonl" \
    2> "$OUT/paper_scale.err"
  echo "paper_scale exit $? after $(( $(date +%s) - start )) s" | tee -a "$OUT/device.txt"
  tail -n 3 "$OUT/paper_scale.err"
fi

study=/tmp/study
mkdir -p "$study"
if [ -n "${SHARED:-}" ]; then cp -r "$SHARED" "$study/shared"; fi
start=$(date +%s)
# shellcheck disable=SC2086
timeout "${STUDY_TIMEOUT:-300}" python3 -m studies.ablate_synthetic --out "$study" --report "$OUT/ABLATIONS_gpu.md" \
  --device "${STUDY_DEVICE:-cuda}" ${STUDY_ARGS:-} > "$OUT/study.log" 2>&1
echo "study exit $? after $(( $(date +%s) - start )) s" | tee -a "$OUT/device.txt"
grep "\[ablate\]" "$OUT/study.log" | tail -n 20
(cd "$study" && tar czf "$OUT/study_results.tgz" study.json shared/tower/pretrain.json \
  $(ls runs/*/seed*/eval/metrics.json runs/*/seed*/summary.json runs/*/seed*/wall_seconds.json \
       runs/*/seed*/metrics.jsonl 2>/dev/null))
for log in "$study"/runs/*/seed*/run.log; do
  [ -f "$log" ] && grep -q -i "error\|traceback" "$log" && { echo "== $log"; tail -n 15 "$log"; }
done
exit 0
