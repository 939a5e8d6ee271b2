#!/usr/bin/env bash
# make gpu-check: on a lent GPU machine with no package registry (docs/GPU.md).
#
# 1. installs what the machine lacks (pycuda and its pure-Python needs, diffusers, pytest) from
#    the carried $WHEELHOUSE into $GPU_SITE with `pip --target`, put on PYTHONPATH. Not a venv:
#    the machine's python3 is itself a venv, and a venv made from one does not see its torch
#    even with --system-site-packages (that flag means the base interpreter's packages);
# 2. the kernel steps: backend check, fatbin prebuild, `pytest -m gpu`, benchmarks/kernel_bench.py;
# 3. benchmarks/gpu.py (needs diffusers, not pycuda): every worker variant side by side, plus a
#    torch.profiler table of one shard per model and decoder in $GPU_OUT.
# A failing step is reported and the independent steps after it still run (one lease, one
# call); the exit status is 1 if any step failed.
set -uo pipefail

PY=${GPU_PYTHON:-python3}
WHEELHOUSE=$(realpath "${WHEELHOUSE:-build/gpu-wheelhouse}")
SITE=$(realpath -m "${GPU_SITE:-build/gpu-site}")
OUT=$(realpath -m "${GPU_OUT:-build/gpu-check}")
CUDA_ROOT=${CUDA_ROOT:-/usr/local/cuda}
VARIANTS=${GPU_VARIANTS:-}
MODELS=${GPU_MODELS:-}  # e.g. "Tongyi-MAI/Z-Image-Turbo black-forest-labs/FLUX.2-klein-4B"; empty: gpu.py's (SD)
BENCH_ARGS=${GPU_BENCH_ARGS:-}
mkdir -p "$SITE" "$OUT"
export PYTHONPATH="$SITE:$PWD" TURBOBATCH_CACHE=${TURBOBATCH_CACHE:-$PWD/build/gpu-cache}
failed=()

step() {  # step NAME COMMAND...: run, time, and remember a failure
    local name=$1 started=$SECONDS
    shift
    echo "== $name"
    if "$@"; then echo "== $name: ok ($((SECONDS - started)) s)"
    else echo "== $name: FAILED ($((SECONDS - started)) s)"; failed+=("$name"); return 1; fi
}

missing() {  # the names that do not import (each package here imports under its wheel's name)
    local name
    for name in "$@"; do
        "$PY" -c "import $name" 2>/dev/null || echo "$name"
    done
}

wheel_files() {  # the newest file in the wheelhouse for each name, preferring this Python's tag
    local name tag file
    tag=$("$PY" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
    for name in "$@"; do
        file=$(ls "$WHEELHOUSE/$name"-*-"$tag"-*.whl 2>/dev/null | tail -1)
        [ -n "$file" ] || file=$(ls "$WHEELHOUSE/$name"-*-py3-none-any.whl 2>/dev/null | tail -1)
        [ -n "$file" ] || { echo "no $name wheel for $tag in $WHEELHOUSE" >&2; return 1; }
        echo "$file"
    done
}

pip_target() { "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$@"; }

build_pycuda_sdist() {  # no prebuilt wheel for this Python: compile pycuda here (about 5 minutes)
    local src=build/pycuda-src lib
    rm -rf "$src" build/libcuda && mkdir -p "$src" build/libcuda
    tar xzf "$WHEELHOUSE"/pycuda-*.tar.gz -C "$src" --strip-components=1
    lib=$(ldconfig -p | awk '/libcuda\.so\.1 /{print $NF; exit}')
    [ -z "$lib" ] || ln -s "$lib" build/libcuda/libcuda.so  # containers often lack the bare name
    (cd "$src" && "$PY" configure.py --cuda-root="$CUDA_ROOT" --no-cuda-enable-curand \
        --cudadrv-lib-dir="$(realpath ../libcuda)","$CUDA_ROOT/lib64/stubs","$CUDA_ROOT/lib64" &&
     "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" .)
}

install() {
    local names pycuda
    names=$(missing pytools platformdirs mako siphash24 typing_extensions diffusers importlib_metadata \
        pytest pluggy iniconfig pygments)
    if [ -n "$names" ]; then
        echo "installing into $SITE: $names"
        pip_target $(wheel_files $names) || return 1
    fi
    "$PY" -c "import pycuda.driver" 2>/dev/null && return 0
    if pycuda=$(wheel_files pycuda 2>/dev/null); then  # a wheel for this Python's tag
        pip_target "$pycuda"
    else
        build_pycuda_sdist
    fi
}

backend() { "$PY" -c "import sys; from turbobatch import kernels; print('kernels backend:', kernels.BACKEND, '-', kernels.BACKEND_REASON); sys.exit(kernels.BACKEND != 'pycuda')"; }

echo "== machine"
nvidia-smi -L 2>&1 | head -4
"$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"

if step install install; then
    if step backend backend; then
        step fatbins "$PY" -m turbobatch.kernels.build
        step gpu-tests "$PY" -m pytest tests/unit/kernels tests/unit/workers/test_batches_gpu.py -m gpu --noconftest \
            -p no:cacheprovider -q -rs
        step kernel-bench "$PY" -m benchmarks.kernel_bench --markdown "$OUT/benchmarks.md"
    fi
    step pipeline-bench bash -o pipefail -c "$PY benchmarks/gpu.py ${MODELS:+--models $MODELS} ${VARIANTS:+--variants '$VARIANTS'} $BENCH_ARGS \
        --trace '$OUT' | tee '$OUT/gpu.txt'"
fi
if [ ${#failed[@]} -gt 0 ]; then echo "gpu-check: FAILED: ${failed[*]}"; exit 1; fi
echo "gpu-check: all steps passed"
