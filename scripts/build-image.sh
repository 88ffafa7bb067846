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
#   deps    localhost/kubernaut-deps:<hash>: the Containerfile's deps stage (the base, uv and the
#           locked dependencies, no Kubernaut), built alone (--target deps) when no image has
#           that tag; <hash> is of the base's ID, the Containerfile down to the build stage's
#           FROM (uv's version included), pyproject.toml, uv.lock and this script's command
#           that builds it. The image's build stage starts FROM it (--build-arg DEPS).
#   image   localhost/kubernaut:<version> (pyproject's, which is the chart's appVersion), and
#           localhost/kubernaut:in-<hash> naming exactly what went in (the Containerfile, this
#           script, pyproject.toml, uv.lock, README.md, kubernaut/, clients/python/, gen/python/,
#           the base)
#
# Caches: the Debian base's root filesystem as a tarball in
# $STATE/image/base/<suite>-<hash of the suite, the package list and the mirror>.tar (and as the
# image localhost/kubernaut-base:<suite>-<hash>); the deps image, so that a source change only
# builds and installs Kubernaut's wheel; an image whose in-<hash> tag exists is not rebuilt (a
# warm run takes about a second). Besides the one in use, the newest 3 in-<hash> images and the
# newest 2 deps images are kept. No --layers: on vfs every committed layer is a full copy of the
# filesystem; the deps image is the one intermediate worth keeping.
# Measured on 2 busy cores: the Debian base 30-45 s; the deps image ~55 s (from PyPI); the
# image from it ~55 s (a third of it copying the deps image into the build's container and
# removing it again); so a cold build ~2.5 min, after a source change ~55 s (was ~100 s).
# Python dependencies come from PyPI inside the build; Kubernaut's wheel from this checkout.
#
# Usage: scripts/build-image.sh [--base auto|python|debian|REF] [--print-image] [--force]
#   --print-image  print the built image's in-<hash> reference on stdout (progress goes to stderr)
#   --force        rebuild the image (and the deps image, and the Debian base) even when cached
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
DEPS_IMAGE=localhost/kubernaut-deps
KEEP=3
KEEP_DEPS=2

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

# --- the locked dependencies ----------------------------------------------------------------
# The host's CA bundle, for the builds' downloads from PyPI (RUN steps only, never committed).
CA_ARGS=()
CA_FILE="${KUBERNAUT_BUILD_CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
if [ -f "$CA_FILE" ]; then
  CA_ARGS=(--volume "$(readlink -f "$CA_FILE"):/run/kubernaut-build/ca.crt:ro"
           --build-arg CA_BUNDLE=/run/kubernaut-build/ca.crt)
fi
BASE_ID=$("${BUILDAH[@]}" inspect --type image --format '{{.FromImageID}}' "$BASE")

# The Containerfile's deps stage alone (its COPY takes pyproject.toml and uv.lock only).
build_deps() {
  "${BUILDAH[@]}" bud --isolation chroot --pull=false "${CA_ARGS[@]}" \
    --build-arg "BASE=$BASE" --target deps \
    --label "org.opencontainers.image.title=kubernaut-deps" \
    --label "ai.kubernaut.inputs=$DEPS_HASH" \
    --file Containerfile --tag "$DEPS_REF" "$ROOT" >&2
}
# shellcheck disable=SC2016 # the Containerfile's own words, not expanded here
DEPS_STAGE_END='FROM ${DEPS} AS build'
grep -qxF "$DEPS_STAGE_END" Containerfile || fail "the Containerfile has no line '$DEPS_STAGE_END' (where the deps stage ends)"
DEPS_HASH=$(
  {
    echo "$BASE $BASE_ID"
    awk -v end="$DEPS_STAGE_END" '$0 == end { exit } { print }' Containerfile
    sha256sum pyproject.toml uv.lock
    declare -f build_deps
  } | sha256sum | cut -c1-12
)
DEPS_REF="$DEPS_IMAGE:$DEPS_HASH"

# --- the image ------------------------------------------------------------------------------
VERSION=$(awk -F'"' '/^version *=/ { print $2; exit }' pyproject.toml)
[ -n "$VERSION" ] || fail "could not read the version from pyproject.toml"
# Exactly what the build context holds (.containerignore) plus the base's identity (the deps
# image's key is a function of a part of the same).
HASH=$(
  {
    echo "$BASE $BASE_ID"
    sha256sum < "$0"  # the content only: the key must not depend on how the script is called
    find Containerfile .containerignore pyproject.toml uv.lock README.md kubernaut clients/python \
      gen/python -type f ! -name '*.pyc' ! -path '*/__pycache__/*' ! -path 'clients/python/dist/*' \
      | LC_ALL=C sort | xargs sha256sum
  } | sha256sum | cut -c1-12
)
REF="$IMAGE:in-$HASH"

if [ "$FORCE" = 0 ] && image_exists "$REF"; then
  step "$REF is built already (--force rebuilds)"
else
  # Only when the image is to be built: a warm run needs no deps image.
  if [ "$FORCE" = 1 ] || ! image_exists "$DEPS_REF"; then
    step "building $DEPS_REF (the locked dependencies from PyPI)"
    build_deps
  else
    step "$DEPS_REF is built already"
  fi
  step "building $REF (buildah bud from $DEPS_REF: Kubernaut's wheel)"
  DEPS_ID=$("${BUILDAH[@]}" inspect --type image --format '{{.FromImageID}}' "$DEPS_REF")
  "${BUILDAH[@]}" bud --isolation chroot --pull=false "${CA_ARGS[@]}" \
    --build-arg "BASE=$BASE" --build-arg "DEPS=$DEPS_REF" \
    --label "org.opencontainers.image.version=$VERSION" \
    --label "org.opencontainers.image.title=kubernaut" \
    --label "ai.kubernaut.inputs=$HASH" \
    --label "ai.kubernaut.deps=$DEPS_REF" --label "ai.kubernaut.deps.id=$DEPS_ID" \
    --file Containerfile --tag "$REF" "$ROOT" >&2
fi
"${BUILDAH[@]}" tag "$REF" "$IMAGE:$VERSION"

# Keep the one in use and the newest $KEEP in-<hash> and $KEEP_DEPS deps images (their other tags
# go with them); layers no image uses any more go with them, and so do the images that --force
# took the tags of.
older_than_newest() {  # PREFIX KEEP IN_USE: the references to remove
  "${BUILDAH[@]}" images --format '{{.CreatedAtRaw}} {{.Name}}:{{.Tag}}' \
    | awk -v prefix="$1" -v in_use="$3" 'index($NF, prefix) == 1 && $NF != in_use' | sort -r \
    | awk -v keep="$2" 'NR > keep { print $NF }'
}
mapfile -t OLD < <(
  older_than_newest "$IMAGE:in-" "$KEEP" "$REF"
  older_than_newest "$DEPS_IMAGE:" "$KEEP_DEPS" "$DEPS_REF"
)
if [ "${#OLD[@]}" -gt 0 ]; then
  note "removing older builds: ${OLD[*]}"
  "${BUILDAH[@]}" rmi "${OLD[@]}" >/dev/null 2>&1 || true
fi
if [ "${#OLD[@]}" -gt 0 ] || [ "$FORCE" = 1 ]; then
  "${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
fi

# sed, not head: head exits after the first line, and buildah, listing one line per tag,
# then dies of SIGPIPE, which pipefail turned into this script failing now and then.
SIZE=$("${BUILDAH[@]}" images --format '{{.Size}}' "$REF" | sed -n 1p)
step "ready: $REF = $IMAGE:$VERSION ($SIZE, $((SECONDS - T0)) s)"
if [ "$PRINT_IMAGE" = 1 ]; then
  echo "$REF"
fi
