#!/usr/bin/env bash
# One prepared check of the CUDA path, for a bare one-GPU machine with little time (11 minutes at most
# after the environment is set up; about 9 on an H200):
#
#   bash bench/gpu_check.sh                          # .venv from requirements.txt, then the 3 steps on CUDA
#   bash bench/gpu_check.sh --out /tmp/gpu_check      # outputs elsewhere (default bench_runs/gpu_check)
#   bash bench/gpu_check.sh --device cpu --no-venv    # dry run on tiny sizes (tests/test_gpu_check.py runs it)
#
# 1. pytest -m gpu: the tests that need a CUDA device (tests/test_gpu.py).
# 2. bench/local_methods.py: the training types on 2 ranks that share the one GPU, over Gloo with
#    CUDA tensors, --check-replicas on. NCCL refuses two ranks on one GPU ("Duplicate GPU
#    detected"), so one GPU can only host a multi-rank run over Gloo.
# 3. bench/gpu_bench.py: seconds per epoch of lenet5w and resnet20 on CIFAR-10-shaped data resident
#    on the device (the real CIFAR-10 where ../shared/data/cifar10 holds it, else the synthetic set).
#
# Every step runs under its own time limit; a failed step does not stop the later ones. The log,
# the two tables and a status line per step land in the --out folder; the exit code is 0 only
# when every step passed.
set -uo pipefail

device=cuda
make_venv=1
out=bench_runs/gpu_check
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --no-venv) make_venv=0; shift ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "error: unknown argument $1; see bash bench/gpu_check.sh --help" >&2; exit 2 ;;
    esac
done
if [ "$device" != cuda ] && [ "$device" != cpu ]; then
    echo "error: --device must be cuda or cpu, got $device" >&2
    exit 2
fi

cd "$(dirname "$0")/.."
mkdir -p "$out"
log="$out/check.log"
: > "$log"
say() { echo "$*" | tee -a "$log"; }

python="${PYTHON:-python3}"
if [ "$make_venv" = 1 ]; then
    # --system-site-packages: a GPU machine's image usually carries a CUDA build of torch, which pip
    # then keeps instead of fetching gigabytes (or failing, where the machine has no network).
    [ -x .venv/bin/python ] || python3 -m venv --system-site-packages .venv
    python=.venv/bin/python
    if ! "$python" -m pip install -q --retries 1 --timeout 10 -r requirements.txt >>"$log" 2>&1; then
        say "warning: pip could not install all of requirements.txt (offline?); going on with what is installed"
    fi
fi
if ! "$python" -c "import torch, torchvision, numpy, yaml, pytest" >>"$log" 2>&1; then
    say "error: $python lacks torch, torchvision, numpy, pyyaml or pytest; see $log"
    exit 2
fi
say "python: $("$python" -c 'import sys, torch; print(sys.executable, "torch", torch.__version__, "CUDA", torch.version.cuda, "GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")')"
if [ "$device" = cuda ] && ! "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    say "error: no CUDA device visible to torch; run with --device cpu for the dry run"
    exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$log" 2>&1

export PYTHONUNBUFFERED=1
if [ "$device" = cuda ]; then
    local_args=(--types MBSGD PLSGD PostLocalSGD SlowMo DiLoCo AdaptiveJ LAPSGD LPPSGD TorchPeriodicAverager EASGD
                --dataset synthetic --synthetic-size 6000 --model resnet20 --epochs 2 --batch-size 64
                --local-steps 8 --switch-epoch 1)
    bench_args=()
    gpu_tests=tests
    # Measured on an H200 (docs/RESULTS.md section 6): about 100, 280 and 125 s. Most of a run is process
    # and CUDA start-up (about 20 s), which no smaller data set removes.
    limits=(150 330 180)
else  # dry run: the same commands on sizes a shared 2-core machine runs in well under a minute
    local_args=(--types PLSGD --dataset synthetic --synthetic-size 400 --model mlp --epochs 1 --batch-size 32
                --local-steps 2)
    bench_args=(--dataset synthetic --synthetic-size 200 --models lenet5 --amp off --epochs 2 --batch-size 32)
    gpu_tests=tests/test_gpu.py  # collecting the whole suite only to skip it would double this step
    limits=(60 60 60)
fi

# The gpu tests are a dozen short main.py runs: side by side where pytest-xdist is installed (GPU images
# usually carry it), so the step fits its limit.
parallel=()
"$python" -c "import xdist" 2>/dev/null && [ "$device" = cuda ] && parallel=(-n 6)

failed=0
run_step() {  # name, time limit (s), command...
    local name="$1" limit="$2" started=$SECONDS status
    shift 2
    say "=== $name (limit ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
    status=${PIPESTATUS[0]}
    if [ "$status" = 0 ]; then
        say "=== $name: ok in $((SECONDS - started)) s"
    else
        say "=== $name: FAILED (exit $status$([ "$status" = 124 ] && echo ', time limit')) after $((SECONDS - started)) s"
        failed=1
    fi
}

run_step "gpu tests" "${limits[0]}" "$python" -m pytest -q -rs "${parallel[@]}" -m gpu "$gpu_tests"
run_step "local methods, 2 ranks on one device over Gloo" "${limits[1]}" "$python" bench/local_methods.py --ranks 2 \
    "${local_args[@]}" --extra "--device $device --backend gloo --check-replicas" \
    --runs-dir "$out/local_methods" --rerun --out "$out/local_methods.md"
run_step "epoch timings" "${limits[2]}" "$python" bench/gpu_bench.py --device "$device" "${bench_args[@]}" \
    --runs-dir "$out/gpu_bench" --rerun --out "$out/gpu_bench.md"

say "gpu_check ($device): $([ $failed = 0 ] && echo 'all steps passed' || echo 'some steps FAILED'); outputs in $out"
exit $failed
