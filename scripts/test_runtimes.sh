#!/usr/bin/env bash
# `make test-runtimes`: the notebooks on the libraries of the Databricks runtimes that learners use.
#
#   scripts/test_runtimes.sh [--build-only] [RUNTIME...]
#
# RUNTIME: 15.4-lts-ml, 16.4-lts-ml or 17.3-lts-ml (a file in databricks/runtimes/); all of them by default.
#
# 1. Every .py of the project is compiled with Python 3.10 and 3.12 (pyenv): the floor in pyproject.toml and
#    the Python of Databricks Runtime 16.x and 17.x ML.
# 2. For each databricks/runtimes/<runtime>.txt, a venv with that runtime's library versions, cached outside
#    the clone: ${PENGUIN_LAB_CACHE:-~/.cache/penguin-lab}/runtimes/<runtime>-<hash of its requirements>.
#    A second run reuses it; a changed file gets a new venv and the old one is removed. Python 3.11 and this
#    project's torch 2.13.0 CPU build stand in for the runtime's own (the only torch wheel on disk).
#    The penguin_lab package is not installed in it: as on Databricks, the notebooks import it from the
#    repository folder.
# 3. tests/test_notebooks_on_databricks.py in that venv: every notebook run as a Databricks driver runs it
#    (tests/databricks_driver.py), with DATABRICKS_RUNTIME_VERSION set to the runtime's version.
set -euo pipefail
shopt -s inherit_errexit  # a failing step inside "$(venv_for ...)" stops the script too

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${PENGUIN_LAB_CACHE:-$HOME/.cache/penguin-lab}/runtimes"
PYENV="${PYENV_ROOT:-$HOME/.pyenv}"

find_python() {  # a working python$1: on PATH (not a pyenv shim for a version it does not select), else pyenv's newest
  local candidate
  for candidate in "$(command -v "python$1" || true)" \
                   "$(ls -d "$PYENV"/versions/"$1".*/bin/python"$1" 2>/dev/null | sort -V | tail -n 1 || true)"; do
    if [ -n "$candidate" ] && "$candidate" -c "" 2>/dev/null; then echo "$candidate"; return; fi
  done
}

PYTHON="${PENGUIN_LAB_RUNTIME_PYTHON:-$(find_python 3.11)}"
TEST_TOOLS=(pytest==9.2.0 pytest-timeout==2.4.0)
HOROVOD_RUNTIMES=" 15.4-lts-ml "   # sparkdl.HorovodRunner and Horovod: 15.4 LTS ML and older only

has_horovod() { [[ "$HOROVOD_RUNTIMES" == *" $1 "* ]]; }
log() { printf '[test-runtimes %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'test-runtimes: error: %s\n' "$*" >&2; exit 1; }

build_only=false
if [ "${1:-}" = "--build-only" ]; then build_only=true; shift; fi
runtimes=("$@")
if [ ${#runtimes[@]} -eq 0 ]; then
  for f in "$REPO"/databricks/runtimes/*.txt; do runtimes+=("$(basename "$f" .txt)"); done
fi
case "$CACHE/" in "$REPO"/*) die "the venv cache $CACHE must be outside the clone $REPO" ;; esac
[ -n "$PYTHON" ] && command -v "$PYTHON" >/dev/null \
  || die "no Python 3.11 found (PENGUIN_LAB_RUNTIME_PYTHON): the runtime venvs need it, for the torch wheel on disk"

compile_everywhere() {
  local version py
  for version in 3.10 3.12; do
    py="$(find_python "$version")"
    [ -n "$py" ] || die "no Python $version on PATH or under $PYENV/versions (pyenv install $version)"
    # Compiled in memory: nothing is written into the clone.
    (cd "$REPO" && find . \( -name .venv -o -name .git -o -name runs -o -name build \) -prune -o -name '*.py' -print0 |
      "$py" -c '
import sys
paths = sys.stdin.read().split("\0")[:-1]
bad = []
for path in paths:
    try:
        compile(open(path, "rb").read(), path, "exec")
    except SyntaxError as e:
        bad.append(f"{path}:{e.lineno}: {e.msg}")
print("\n".join(bad), file=sys.stderr)
print(f"{len(paths)} files compile with Python {sys.version.split()[0]}" if not bad else "", end="")
sys.exit(1 if bad else 0)') || die "some files do not compile with Python $version (above)"
    echo
  done
}

venv_for() {  # the runtime's venv, built when missing
  local runtime="$1" requirements="$REPO/databricks/runtimes/$1.txt" hash venv
  [ -f "$requirements" ] || die "no requirements for runtime $runtime: $requirements"
  # Comments do not change a venv: only the requirements, the test tools and the Python are hashed.
  hash="$({ grep -v "^#" "$requirements"; echo "${TEST_TOOLS[*]}"; "$PYTHON" -V; } | sha256sum | cut -c1-12)"
  venv="$CACHE/$runtime-$hash"
  if [ ! -f "$venv/.complete" ]; then
    log "building $venv (a few minutes the first time: pyspark is built from its source archive)" >&2
    rm -rf "$venv"
    mkdir -p "$CACHE"
    "$PYTHON" -m venv "$venv" || die "creating $venv failed"
    "$venv/bin/python" -m pip install -qq --disable-pip-version-check -r "$requirements" "${TEST_TOOLS[@]}" >&2 \
      || die "installing $requirements into $venv failed"
    if has_horovod "$runtime"; then
      "$REPO/scripts/build_horovod.sh" "$venv/bin/python" >&2 || die "building Horovod into $venv failed"
    fi
    touch "$venv/.complete"
    for old in "$CACHE/$runtime"-*; do [ "$old" = "$venv" ] || rm -rf "$old"; done
  fi
  echo "$venv"
}

start=$SECONDS
compile_everywhere
failed=()
for runtime in "${runtimes[@]}"; do
  t0=$SECONDS
  venv="$(venv_for "$runtime")"
  $build_only && { log "$runtime: $venv ready ($((SECONDS - t0)) s)"; continue; }
  log "$runtime: the notebooks as a Databricks driver runs them, in $venv"
  horovod=0; has_horovod "$runtime" && horovod=1
  if (cd "$REPO" && PENGUIN_LAB_RUNTIME="${runtime%%-*}" PENGUIN_LAB_RUNTIME_HOROVOD=$horovod \
        "$venv/bin/python" -m pytest -q -p no:cacheprovider --durations=5 \
        tests/test_notebooks_on_databricks.py); then
    log "$runtime: passed in $((SECONDS - t0)) s"
  else
    log "$runtime: FAILED after $((SECONDS - t0)) s"
    failed+=("$runtime")
  fi
done
log "all runtimes in $((SECONDS - start)) s"
[ ${#failed[@]} -eq 0 ] || die "the notebooks failed on ${failed[*]}"
