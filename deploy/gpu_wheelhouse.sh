#!/usr/bin/env bash
# Fill build/gpu-wheelhouse for `make gpu-check` on a lent GPU machine that has no package
# registry (docs/GPU.md). Run on a machine with registry access, from the repository root, after
# `make setup`; then carry build/gpu-wheelhouse (about 15 MB) to the GPU machine.
#
# Besides pure-Python wheels, diffusers and pycuda's sdist, it builds a pycuda wheel for the GPU
# machine's Python (3.12 by default) here, against this machine's CUDA headers and a stub
# libcuda.so.1 (every function cuda.h and cudaProfiler.h declare, empty): the wheel links the driver by soname and
# the GPU machine's real driver stands in at run time. So no compile (5 minutes on 2 cores)
# spends the GPU machine's time. Without a wheel for its Python, gpu-check builds the sdist there.
set -euo pipefail
WH=${WHEELHOUSE:-build/gpu-wheelhouse}
# The GPU machine's Python (3.12 there): any CPython of that version with its headers.
PY=${GPU_BUILD_PYTHON:-python3.12}
if ! "$PY" -c pass 2>/dev/null; then  # e.g. a pyenv shim of a version that is not active
  PY=$(ls -d "$HOME"/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)
  [ -n "$PY" ] || { echo "no Python 3.12: set GPU_BUILD_PYTHON to one (with its headers)" >&2; exit 1; }
fi
CUDA_ROOT=${CUDA_ROOT:-/usr/local/cuda}
PIP=${PIP:-.venv/bin/pip}
PYCUDA=2026.1
WORK=build/pycuda-wheel

mkdir -p "$WH"
# 1. What gpu-check installs there: pycuda's sdist and build/test dependencies, diffusers.
$PIP download -q -d "$WH" --no-deps --no-binary pycuda --no-build-isolation "pycuda==$PYCUDA"
$PIP download -q -d "$WH" --no-deps pytools==2026.1.1 platformdirs mako typing_extensions \
    pytest iniconfig pluggy packaging pygments setuptools wheel exceptiongroup diffusers==0.42.1 importlib_metadata
for v in 3.10 3.11 3.12 3.13; do  # compiled dependencies, one wheel per Python version
  $PIP download -q -d "$WH" --no-deps --only-binary :all: --platform manylinux2014_x86_64 \
      --python-version "$v" markupsafe siphash24 tomli
done

# 2. The pycuda wheel for $PY.
rm -rf "$WORK"; mkdir -p "$WORK/stub" "$WORK/src"
"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q setuptools wheel "numpy>=2"   # built against numpy 2: runs on any 2.x
printf '#include <cuda.h>\n#include <cudaProfiler.h>\n' | gcc -E -P -I "$CUDA_ROOT/include" - \
    | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' (' | sort -u \
    | sed 's/.*/void &(void) {}/' > "$WORK/stub/libcuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$WORK/stub/libcuda.so" "$WORK/stub/libcuda_stub.c"
tar xzf "$WH/pycuda-$PYCUDA.tar.gz" -C "$WORK/src" --strip-components=1
stub=$(cd "$WORK/stub" && pwd)
(cd "$WORK/src" && ../venv/bin/python configure.py --cuda-root="$CUDA_ROOT" --no-cuda-enable-curand \
    --cudadrv-lib-dir="$stub" >/dev/null && ../venv/bin/pip wheel -q --no-build-isolation --no-deps -w wheel .)
wheel=$(ls "$WORK"/src/wheel/pycuda-*.whl)
# The driver must be linked by soname, or the wheel would need this stub at run time.
unzip -o -q "$wheel" 'pycuda/_driver*.so' -d "$WORK/check"
readelf -d "$WORK"/check/pycuda/_driver*.so | grep -q 'NEEDED.*\[libcuda\.so\.1\]' \
    || { echo "pycuda's _driver does not link libcuda.so.1" >&2; exit 1; }
cp "$wheel" "$WH/"
echo "wheelhouse: $WH ($(du -sh "$WH" | cut -f1)); pycuda wheel: $(basename "$wheel")"
