#!/usr/bin/env bash
# Builds Kubernaut's one container image (Containerfile) with buildah, `--storage-driver vfs`
# (works without overlayfs or fuse) and `--isolation chroot` (the build's RUN steps need no OCI
# runtime):
#   base    --base python  the public docker.io/library/python:3.11-slim-bookworm (BASE's default)
#           --base debian  a Debian root filesystem that mmdebstrap makes from Debian's packages
#                          (bookworm: python3 3.11, python3-venv, ca-certificates, netbase,
#                          tzdata), for machines that reach no container registry
#           --base auto    (the default) python when its registry answers, else debian
#           --base REF     any other image with Python 3.11 at `python3`
#   image   localhost/kubernaut:<version> (pyproject's, which is the chart's appVersion), and
#           localhost/kubernaut:in-<hash> naming exactly what went in (the Containerfile, this
#           script, pyproject.toml, uv.lock, README.md, kubernaut/, gen/python/, the base)
#
# Caches: the Debian base's root filesystem as a tarball in
# $STATE/image/base/<suite>-<hash of the suite, the package list and the mirror>.tar (and as the
# image localhost/kubernaut-base:<suite>-<hash>); an image whose in-<hash> tag exists is not
# rebuilt (a warm run takes about a second). Only the newest 3 in-<hash> images are kept.
# No --layers: on vfs every committed layer is a full copy of the filesystem, which costs more
# than installing the locked dependencies again (~35 s from PyPI).
# Cold, on 2 busy cores: the Debian base 30-45 s, the image 60-90 s (also after a source change).
# Python dependencies come from PyPI inside the build; Kubernaut's wheel from this checkout.
#
# Usage: scripts/build-image.sh [--base auto|python|debian|REF] [--print-image] [--force]
#   --print-image  print the built image's in-<hash> reference on stdout (progress goes to stderr)
#   --force        rebuild the image (and the Debian base) even when cached
# Environment: KUBERNAUT_DEBIAN_MIRROR (default http://deb.debian.org/debian);
#   KUBERNAUT_BUILD_CA_BUNDLE, the CA bundle the build's downloads trust (default $SSL_CERT_FILE,
#   else /etc/ssl/certs/ca-certificates.crt: the host's, for egress through a TLS proxy); it is
#   mounted into the build's RUN steps only, never into the image.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
T0=$SECONDS

STATE="${KUBERNAUT_STATE_DIR:-$HOME/.local/state/kubernaut}"
PUBLIC_BASE=docker.io/library/python:3.11-slim-bookworm
SUITE=bookworm
DEBIAN_PACKAGES=(python3 python3-venv ca-certificates netbase tzdata)
MIRROR="${KUBERNAUT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
IMAGE=localhost/kubernaut
KEEP=3

BASE_CHOICE=auto
PRINT_IMAGE=0
FORCE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --base) [ $# -ge 2 ] || { echo "build-image: --base needs a value" >&2; exit 2; }; BASE_CHOICE=$2; shift ;;
    --base=*) BASE_CHOICE=${1#--base=} ;;
    --print-image) PRINT_IMAGE=1 ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-image: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

# Progress goes to stderr so that --print-image leaves stdout clean.
step() { printf '==> [%3ss] %s\n' "$((SECONDS - T0))" "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
fail() { printf 'build-image: error: %s\n' "$*" >&2; exit 1; }

command -v buildah >/dev/null 2>&1 || fail "'buildah' is not on PATH (scripts/install-debian-packages.sh installs it)"
BUILDAH=(buildah --storage-driver vfs)
image_exists() { "${BUILDAH[@]}" inspect --type image "$1" >/dev/null 2>&1; }

mkdir -p "$STATE/image/base"

# --- the base -------------------------------------------------------------------------------
debian_base() {
  command -v mmdebstrap >/dev/null 2>&1 || fail "'mmdebstrap' is not on PATH (scripts/install-debian-packages.sh installs it)"
  [ "$(id -u)" = 0 ] || fail "the Debian base needs root (mmdebstrap's root mode, buildah's storage)"
  local hash key tarball ref ctr
  hash=$(printf '%s\n' "$SUITE" "$MIRROR" "${DEBIAN_PACKAGES[@]}" | sha256sum | cut -c1-12)
  key="$SUITE-$hash"
  tarball="$STATE/image/base/$key.tar"
  ref="localhost/kubernaut-base:$key"
  if [ "$FORCE" = 1 ]; then
    rm -f "$tarball"
    "${BUILDAH[@]}" rmi "$ref" >/dev/null 2>&1 || true
  fi
  if [ ! -s "$tarball" ]; then
    step "Debian $SUITE root filesystem with ${DEBIAN_PACKAGES[*]} (mmdebstrap, $MIRROR)"
    # minbase: dpkg, apt and the Essential set, no init; documentation and translations left out
    # (each package's copyright file stays). A half-written tarball never gets the final name.
    mmdebstrap --quiet --format=tar --variant=minbase --include="$(IFS=,; echo "${DEBIAN_PACKAGES[*]}")" \
      --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/info/*' \
      "$SUITE" "$tarball.partial" "$MIRROR" >&2
    mv "$tarball.partial" "$tarball"
    note "$(du -h "$tarball" | cut -f1) in $tarball"
  fi
  if ! image_exists "$ref"; then
    step "importing it as $ref"
    ctr=$("${BUILDAH[@]}" from scratch)
    "${BUILDAH[@]}" add "$ctr" "$tarball" / >/dev/null
    "${BUILDAH[@]}" config \
      --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --env LANG=C.UTF-8 \
      --cmd /bin/sh \
      --label "org.opencontainers.image.description=Debian $SUITE minbase with ${DEBIAN_PACKAGES[*]}" \
      "$ctr"
    "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$ref" >/dev/null
  fi
  BASE=$ref
}

# A registry's base is pulled once (its ID keys the image below), then used as it is.
pulled() { image_exists "$1" || "${BUILDAH[@]}" pull --quiet "$1" >/dev/null; }

case "$BASE_CHOICE" in
  debian) debian_base ;;
  auto)
    if pulled "$PUBLIC_BASE" 2>/dev/null; then
      BASE=$PUBLIC_BASE
    else
      note "$PUBLIC_BASE cannot be pulled (no registry reachable?): a Debian base instead"
      debian_base
    fi
    ;;
  *)
    [ "$BASE_CHOICE" = python ] && BASE=$PUBLIC_BASE || BASE=$BASE_CHOICE
    pulled "$BASE" || fail "cannot pull $BASE (no registry reachable? --base debian needs none)"
    ;;
esac
step "base: $BASE"

# --- the image ------------------------------------------------------------------------------
VERSION=$(awk -F'"' '/^version *=/ { print $2; exit }' pyproject.toml)
[ -n "$VERSION" ] || fail "could not read the version from pyproject.toml"
# Exactly what the build context holds (.containerignore) plus the base's identity.
BASE_ID=$("${BUILDAH[@]}" inspect --type image --format '{{.FromImageID}}' "$BASE")
HASH=$(
  {
    echo "$BASE $BASE_ID"
    sha256sum < "$0"  # the content only: the key must not depend on how the script is called
    find Containerfile .containerignore pyproject.toml uv.lock README.md kubernaut gen/python \
      -type f ! -name '*.pyc' ! -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum
  } | sha256sum | cut -c1-12
)
REF="$IMAGE:in-$HASH"

if [ "$FORCE" = 0 ] && image_exists "$REF"; then
  step "$REF is built already (--force rebuilds)"
else
  step "building $REF (buildah bud; the locked dependencies come from PyPI)"
  CA_ARGS=()
  CA_FILE="${KUBERNAUT_BUILD_CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
  if [ -f "$CA_FILE" ]; then
    CA_ARGS=(--volume "$(readlink -f "$CA_FILE"):/run/kubernaut-build/ca.crt:ro"
             --build-arg CA_BUNDLE=/run/kubernaut-build/ca.crt)
  fi
  "${BUILDAH[@]}" bud --isolation chroot --pull=false "${CA_ARGS[@]}" \
    --build-arg "BASE=$BASE" \
    --label "org.opencontainers.image.version=$VERSION" \
    --label "org.opencontainers.image.title=kubernaut" \
    --label "ai.kubernaut.inputs=$HASH" \
    --file Containerfile --tag "$REF" "$ROOT" >&2
fi
"${BUILDAH[@]}" tag "$REF" "$IMAGE:$VERSION"

# Keep the newest $KEEP in-<hash> images; layers no image uses any more go with them.
mapfile -t OLD < <(
  "${BUILDAH[@]}" images --format '{{.CreatedAtRaw}} {{.Name}}:{{.Tag}}' \
    | awk -v prefix="$IMAGE:in-" 'index($NF, prefix) == 1' | sort -r \
    | awk -v keep="$KEEP" 'NR > keep { print $NF }'
)
if [ "${#OLD[@]}" -gt 0 ]; then
  note "removing older builds: ${OLD[*]}"
  "${BUILDAH[@]}" rmi "${OLD[@]}" >/dev/null 2>&1 || true
  "${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
fi

# sed, not head: head exits after the first line, and buildah, listing one line per tag,
# then dies of SIGPIPE, which pipefail turned into this script failing now and then.
SIZE=$("${BUILDAH[@]}" images --format '{{.Size}}' "$REF" | sed -n 1p)
step "ready: $REF = $IMAGE:$VERSION ($SIZE, $((SECONDS - T0)) s)"
if [ "$PRINT_IMAGE" = 1 ]; then
  echo "$REF"
fi
