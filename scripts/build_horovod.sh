#!/usr/bin/env bash
# Build (once) and install Horovod 0.28.1 for PyTorch (CPU, Gloo, no MPI) into a venv.
#
#   scripts/build_horovod.sh [PYTHON]      PYTHON defaults to .venv/bin/python (repo root)
#
# The wheel is cached OUTSIDE the clone, keyed by torch version and Python ABI:
#   ${PENGUIN_LAB_CACHE:-$HOME/.cache/penguin-lab}/wheels/torch-<ver>/horovod-0.28.1-<abi>-<abi>-<plat>.whl
# Force a rebuild with PENGUIN_LAB_REBUILD_HOROVOD=1 (or delete that folder).
# See scripts/README-horovod.md for why the sdist has to be patched.
set -euo pipefail

HVD_VERSION=0.28.1
# Horovod's runtime deps (setup.py require_list; cffi is added when PyTorch is enabled).
# Installed explicitly because the wheel is installed with --no-deps.
RUNTIME_DEPS=(cloudpickle==3.1.3 psutil==7.2.2 pyyaml==6.0.4 packaging==26.3 cffi==2.1.1)

log() { printf '[build_horovod %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[build_horovod] ERROR: %s\n' "$*" >&2; exit 1; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${1:-$REPO_ROOT/.venv/bin/python}"
# Make absolute WITHOUT resolving symlinks (a venv's python is a symlink out of the venv).
case "$PY" in /*) ;; *) PY="$PWD/$PY" ;; esac
[ -x "$PY" ] || die "python interpreter not found or not executable: $PY"
VENV_BIN="$(dirname "$PY")"
# Not required (horovod.runner.run launches workers with sys.executable, checked with an empty
# PATH), but keep the venv's bin (horovodrun, pip, ...) first on PATH as an activated venv would.
export PATH="$VENV_BIN:$PATH"

"$PY" -m pip --version >/dev/null 2>&1 || die "pip is not available in $PY's environment"

TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)" \
  || die "torch is not importable with $PY; install the project's requirements first"
read -r PYTAG PLAT < <("$PY" -c 'import sys, sysconfig
t = "cp%d%d" % sys.version_info[:2]
print(t + sys.abiflags if sys.implementation.name == "cpython" else sys.implementation.cache_tag.replace("-", "_"),
      sysconfig.get_platform().replace("-", "_").replace(".", "_"))')
[ -n "${PYTAG:-}" ] && [ -n "${PLAT:-}" ] || die "could not determine the Python ABI tag / platform of $PY"
WHEEL_NAME="horovod-${HVD_VERSION}-${PYTAG}-${PYTAG}-${PLAT}.whl"

CACHE_ROOT="${PENGUIN_LAB_CACHE:-$HOME/.cache/penguin-lab}"
CACHE_DIR="$CACHE_ROOT/wheels/torch-${TORCH_VERSION}"
WHEEL="$CACHE_DIR/$WHEEL_NAME"
BUILD_LOG="$CACHE_DIR/horovod-${HVD_VERSION}-${PYTAG}-build.log"
case "$CACHE_DIR/" in "$REPO_ROOT"/*) die "cache dir $CACHE_DIR must be outside the clone $REPO_ROOT" ;; esac
mkdir -p "$CACHE_DIR"

install_deps() {
  log "installing horovod runtime deps: ${RUNTIME_DEPS[*]}"
  "$PY" -m pip install --quiet --disable-pip-version-check "${RUNTIME_DEPS[@]}"
}

build_wheel() {
  local tmp start pid elapsed last srcdir n
  tmp="$(mktemp -d "${TMPDIR:-/tmp}/horovod-build.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  start=$SECONDS

  log "downloading horovod==$HVD_VERSION sdist"
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    "horovod==$HVD_VERSION" -d "$tmp/dl" >"$tmp/download.log" 2>&1 \
    || { tail -n 30 "$tmp/download.log" >&2; die "pip download of horovod==$HVD_VERSION failed"; }
  tar -xzf "$tmp/dl/horovod-$HVD_VERSION.tar.gz" -C "$tmp"
  srcdir="$tmp/horovod-$HVD_VERSION"

  # PyTorch >= 2.1 headers need C++17; 0.28.1 asks for C++14 (fixed upstream in PR #3998, unreleased).
  local f
  for f in CMakeLists.txt horovod/torch/CMakeLists.txt; do
    n="$(grep -cE '^[[:space:]]*set\(CMAKE_CXX_STANDARD 14\)' "$srcdir/$f" || true)"
    [ "$n" = 1 ] || die "patch: expected exactly one 'set(CMAKE_CXX_STANDARD 14)' in $f, found ${n:-0}; the sdist changed, review the patch"
    sed -i -E 's/^([[:space:]]*)set\(CMAKE_CXX_STANDARD 14\)/\1set(CMAKE_CXX_STANDARD 17)/' "$srcdir/$f"
    grep -qE '^[[:space:]]*set\(CMAKE_CXX_STANDARD 17\)' "$srcdir/$f" || die "patch of $f did not apply"
    log "patched $f: C++14 -> C++17"
  done

  log "building wheel against torch $TORCH_VERSION ($PYTAG) — takes ~2.5 min on 2 idle cores, longer under load; full log: $BUILD_LOG"
  : >"$BUILD_LOG"
  (
    cd "$srcdir"
    export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
      HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=gloo \
      MAKEFLAGS="-j${HOROVOD_BUILD_JOBS:-2}"
    exec "$PY" -m pip wheel -v --disable-pip-version-check --no-cache-dir --no-deps --no-build-isolation \
      --wheel-dir "$tmp/wheel" .
  ) >>"$BUILD_LOG" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 15
    kill -0 "$pid" 2>/dev/null || break
    elapsed=$((SECONDS - start))
    last="$(grep -oE '\[ *[0-9]+%\]' "$BUILD_LOG" | tail -n 1 || true)"
    log "  ...building, ${elapsed}s elapsed ${last:+(cmake $last)}"
  done
  if ! wait "$pid"; then
    echo "----- last 40 lines of $BUILD_LOG -----" >&2
    tail -n 40 "$BUILD_LOG" >&2
    die "horovod wheel build failed (full log: $BUILD_LOG)"
  fi
  local built
  built="$(ls "$tmp"/wheel/horovod-*.whl 2>/dev/null | head -n 1 || true)"
  [ -n "$built" ] || die "pip wheel succeeded but produced no horovod wheel (log: $BUILD_LOG)"
  [ "$(basename "$built")" = "$WHEEL_NAME" ] \
    || die "built wheel is $(basename "$built"), expected $WHEEL_NAME"
  # Atomic publish: copy to a temp name on the same filesystem, then rename.
  cp "$built" "$WHEEL.tmp.$$"
  mv -f "$WHEEL.tmp.$$" "$WHEEL"
  printf 'horovod %s built %s against torch %s, python %s (%s); patch: CMAKE_CXX_STANDARD 14->17\n' \
    "$HVD_VERSION" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$TORCH_VERSION" "$PYTAG" "$PLAT" >"$WHEEL.info"
  log "built in $((SECONDS - start))s -> $WHEEL"
  rm -rf "$tmp"
  trap - EXIT
}

verify() {
  log "verifying: 2-process gloo allreduce on localhost"
  # horovod.runner.run starts helpers with multiprocessing "spawn", which re-imports __main__:
  # the check must be a real file with a __main__ guard (from stdin it fails: '<stdin>' not found).
  local out check rc=0
  check="$(mktemp "${TMPDIR:-/tmp}/horovod_check.XXXXXX.py")"
  cat >"$check" <<'EOF'
import warnings
warnings.filterwarnings("ignore", category=DeprecationWarning)
import torch
import horovod
import horovod.torch as hvd
from horovod.runner import run


def fn():
    import torch
    import horovod.torch as hvd
    hvd.init()
    t = torch.full((4,), float(hvd.rank() + 1))
    s = hvd.allreduce(t, op=hvd.Sum, name="check_sum")
    a = hvd.allreduce(t, name="check_avg")  # default op: Average
    out = (hvd.rank(), hvd.size(), s.tolist(), a.tolist())
    hvd.shutdown()
    return out


if __name__ == "__main__":
    res = run(fn, num_proc=2, hosts="localhost:2", use_gloo=True)  # num_proc: np= is a deprecated alias
    assert sorted(r[0] for r in res) == [0, 1], res
    for rank, size, s, a in res:
        assert size == 2 and s == [3.0] * 4 and a == [1.5] * 4, res
    print("horovod %s OK: torch %s, gloo built=%s, 2-rank allreduce sum=%s avg=%s"
          % (horovod.__version__, torch.__version__, hvd.gloo_built(), res[0][2][0], res[0][3][0]))
EOF
  out="$(cd "$(dirname "$check")" && timeout "${HOROVOD_CHECK_TIMEOUT:-300}" "$PY" "$check" 2>&1)" || rc=$?
  rm -f "$check"
  if [ "$rc" != 0 ]; then
    printf '%s\n' "$out" | tail -n 40 >&2
    if [ -s "$BUILD_LOG" ]; then
      echo "----- last 15 lines of build log $BUILD_LOG -----" >&2
      tail -n 15 "$BUILD_LOG" >&2
    fi
    [ "$rc" = 124 ] && echo "(check timed out after ${HOROVOD_CHECK_TIMEOUT:-300}s)" >&2
    die "horovod verification failed, exit $rc (2-process gloo allreduce). To rebuild: PENGUIN_LAB_REBUILD_HOROVOD=1 $0 $PY"
  fi
  printf '%s\n' "$out" | tail -n 1
}

# One build at a time per cache folder (a second concurrent run waits, then uses the cache).
exec 9>"$CACHE_DIR/.lock"
flock 9

if [ "${PENGUIN_LAB_REBUILD_HOROVOD:-0}" = 1 ]; then
  log "PENGUIN_LAB_REBUILD_HOROVOD=1: ignoring cached wheel"
  rm -f "$WHEEL" "$WHEEL.info"
fi

if [ -f "$WHEEL" ]; then
  log "using cached wheel $WHEEL"
else
  log "no cached wheel for torch $TORCH_VERSION / $PYTAG; building"
  build_wheel
fi

install_deps
log "installing $WHEEL_NAME (--no-deps)"
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "$WHEEL"
verify
log "done in ${SECONDS}s"
