#!/usr/bin/env bash
# The GPU session's one device call: bench/gpu_paper_scale.py at paper sizes on one H100/H200 (see BENCHMARKS.md).
#
#   here, once:   echo /.whl/ >> .git/info/exclude
#                 python3 -m pip download --no-deps --only-binary=:all: -d .whl beartype==0.23.1
#   device tool:  run(command="bash bench/gpu_session.sh", carry=[".whl"], timeout_s=540)
#   here, after:  mkdir -p bench/results/h200_paper_scale && cp <files_at>/* bench/results/h200_paper_scale/
#
# Results in $OUT (./gpu_out without it): gpu_paper_scale.json (rewritten after every section, so a run cut short
# still returns what it measured), table.md, paper_scale.log (stdout + stderr), device.txt.
# Environment: PAPER_TIMEOUT (seconds, default 480; the script's --budget-s is 40 s less, so its optional sections
# are skipped rather than cut), PAPER_ARGS (more arguments, e.g. "--sections batch,tower" for a second call).
# rsfuse imports beartype, which the device image lacks: its wheel travels in .whl/ (pure Python).
set -u
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$OUT/device.txt"
if ! python3 -c "import torch, transformers, rsfuse; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))" 2>&1 | tee -a "$OUT/device.txt"; then
  echo "rsfuse does not import here: carry .whl/ with beartype (see the top of bench/gpu_session.sh)" | tee -a "$OUT/device.txt"
  exit 2
fi
timeout_s=${PAPER_TIMEOUT:-480}
start=$(date +%s)
# shellcheck disable=SC2086
timeout "$timeout_s" python3 bench/gpu_paper_scale.py --out "$OUT" --budget-s $((timeout_s - 40)) ${PAPER_ARGS:-} \
  > "$OUT/paper_scale.log" 2>&1
status=$?
echo "gpu_paper_scale exit $status after $(( $(date +%s) - start )) s" | tee -a "$OUT/device.txt"
if [ -f "$OUT/table.md" ]; then cat "$OUT/table.md"; else tail -n 40 "$OUT/paper_scale.log"; fi
exit $status
