#!/usr/bin/env bash
# Builds the slim Protégé image without Docker, from Debian's packages and PyPI only, as an OCI
# image layout: dist/image/protege-slim, tagged with the project's version (`make image`).
#
#   1. wheels    the project's wheel, and every file of docker/requirements.lock checked
#                against its sha256 (binary wheels only)
#   2. rootfs    Debian bookworm, variant essential, with python3.11, libstdc++6 (for the
#                manylinux wheels), ca-certificates and tzdata
#                (mmdebstrap; no docs, man pages or locales)
#   3. venv      /opt/protege: the locked wheels and the project's, installed with --no-deps
#                by a pip that is not left in the image; precompiled bytecode (the root
#                filesystem is read-only in the chart's pods); the user protege (10001)
#   4. layer     one tar, sorted, numeric owners, mtimes clamped to SOURCE_DATE_EPOCH
#   5. image     umoci: the layer, then the config (entrypoint, user, env, labels)
#
# Needs root (mmdebstrap's root mode, chroot), mmdebstrap and umoci (Debian's packages; the
# Makefile installs them). Settings from the environment:
#   SOURCE_DATE_EPOCH  every timestamp of the image (default 0); with the same value, the
#                      same Debian packages and the same lock, the image's digest is the same
#   REVISION           the source revision, for the revision label (default "unknown")
#   IMAGE_DIR          where the layout goes (default dist/image)
#   DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR   e.g. snapshot.debian.org URLs to pin the packages
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0}
REVISION=${REVISION:-unknown}
IMAGE_DIR=${IMAGE_DIR:-dist/image}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# The pip that installs the venv; it is removed afterwards.
PIP_VERSION=26.0.1
export SOURCE_DATE_EPOCH

version=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
work=build/image
rootfs=$work/rootfs
layout=$IMAGE_DIR/protege-slim
step() { printf '[image %(%T)T] %s\n' -1 "$*"; }

wheels() {
    step "wheels: docker/requirements.lock and the project"
    mkdir -p "$work/wheels"
    rm -rf "$work/project"
    "$PYTHON" -m pip download -qq --no-deps --only-binary :all: --require-hashes \
        -r docker/requirements.lock -d "$work/wheels"
    "$PYTHON" -m pip download -qq --no-deps --only-binary :all: "pip==$PIP_VERSION" -d "$work/pip"
    "$PYTHON" -m pip wheel -qq --no-deps . -w "$work/project"
}

base() {
    step "rootfs: Debian bookworm (mmdebstrap, essential + python3.11, libstdc++6, ca-certificates, tzdata)"
    rm -rf "$rootfs"
    # The sources are given, so mmdebstrap never reads them from standard input.
    mmdebstrap --quiet --mode=root --variant=essential \
        --include=python3.11,libstdc++6,ca-certificates,tzdata \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
        bookworm "$rootfs" \
        "deb $DEBIAN_MIRROR bookworm main" "deb $DEBIAN_MIRROR bookworm-updates main" \
        "deb $DEBIAN_SECURITY_MIRROR bookworm-security main" </dev/null
}

venv() {
    step "venv: /opt/protege (locked wheels, --no-deps)"
    mkdir -p "$rootfs/tmp/wheels" "$rootfs/tmp/project"
    cp "$work"/wheels/*.whl "$rootfs/tmp/wheels/"
    cp "$work"/project/*.whl "$rootfs/tmp/project/"
    cp "$work"/pip/pip-*.whl "$rootfs/tmp/pip.whl"
    cp docker/requirements.lock "$rootfs/tmp/requirements.lock"
    local pip=(chroot "$rootfs" /opt/protege/bin/python /tmp/pip.whl/pip install -qq --no-index
        --no-deps --no-compile --disable-pip-version-check --no-cache-dir)
    chroot "$rootfs" python3.11 -m venv --without-pip /opt/protege
    "${pip[@]}" --require-hashes --find-links /tmp/wheels -r /tmp/requirements.lock
    local wheel
    wheel=$(basename "$work"/project/protege-*.whl)
    "${pip[@]}" "/tmp/project/$wheel"
    install -m 0755 docker/healthcheck.py "$rootfs/opt/protege/bin/protege-healthcheck"
    sed -i '1s|.*|#!/opt/protege/bin/python|' "$rootfs/opt/protege/bin/protege-healthcheck"
    # Bytecode once, at build time: nothing can be written at run time. unchecked-hash keeps
    # it reproducible (no source mtimes inside).
    chroot "$rootfs" /opt/protege/bin/python -m compileall -q -j 0 \
        --invalidation-mode unchecked-hash /opt/protege/lib
    rm -rf "$rootfs/tmp/wheels" "$rootfs/tmp/project" "$rootfs/tmp/pip.whl" \
        "$rootfs/tmp/requirements.lock"
}

user() {
    step "user: protege (10001), /var/lib/protege/spool"
    echo 'protege:x:10001:10001:Protege:/var/lib/protege:/usr/sbin/nologin' >>"$rootfs/etc/passwd"
    echo 'protege:x:10001:' >>"$rootfs/etc/group"
    echo 'protege:!:0::::::' >>"$rootfs/etc/shadow"
    # Where the chart mounts volumes (the spool, /tmp); writable by the user without them too.
    install -d -o 10001 -g 10001 -m 0750 "$rootfs/var/lib/protege" "$rootfs/var/lib/protege/spool"
    chmod 1777 "$rootfs/tmp"
    # No setuid/setgid programs (unix_chkpwd, su...): nobody logs in to a container.
    find "$rootfs" -xdev -perm /6000 -type f -exec chmod ug-s {} +
}

layer() {
    step "layer: reproducible tar"
    rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log \
        "$rootfs"/var/cache/ldconfig/aux-cache "$rootfs"/etc/machine-id "$rootfs"/tmp/*
    # The runtime provides /dev: no device nodes in the image.
    find "$rootfs/dev" -mindepth 1 -delete
    find "$rootfs" -newermt "@$SOURCE_DATE_EPOCH" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +
    tar --create --file "$work/layer.tar" --directory "$rootfs" --sort=name --numeric-owner \
        --mtime="@$SOURCE_DATE_EPOCH" --clamp-mtime --xattrs --xattrs-include='security.capability' \
        --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime .
}

image() {
    step "image: $layout:$version (umoci)"
    rm -rf "$layout"
    mkdir -p "$IMAGE_DIR"
    umoci init --layout "$layout"
    umoci new --image "$layout:$version"
    umoci raw add-layer --image "$layout:$version" --history.created "$created" \
        --history.created_by "docker/build-image.sh (Debian bookworm, docker/requirements.lock)" \
        "$work/layer.tar"
    local label=(
        org.opencontainers.image.title=protege
        "org.opencontainers.image.description=Protégé: the gateway, sidecar, console and autopilot (no torch)"
        "org.opencontainers.image.version=$version"
        org.opencontainers.image.source=https://github.com/protege-ai/protege
        org.opencontainers.image.licenses=Apache-2.0
        "org.opencontainers.image.created=$created"
        "org.opencontainers.image.revision=$REVISION"
    )
    local args=(--no-history --created "$created" --architecture amd64 --os linux
        --config.user 10001:10001 --config.entrypoint protege --config.cmd --help
        --config.workingdir /var/lib/protege --config.stopsignal SIGTERM
        --config.volume /var/lib/protege/spool
        --config.env PATH=/opt/protege/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
        --config.env HOME=/tmp --config.env LANG=C.UTF-8
        --config.env PYTHONDONTWRITEBYTECODE=1 --config.env PYTHONUNBUFFERED=1)
    for l in "${label[@]}"; do args+=(--config.label "$l" --manifest.annotation "$l"); done
    umoci config --image "$layout:$version" "${args[@]}"
    umoci gc --layout "$layout"
}

wheels
base
venv
user
layer
image
rm -f "$work/layer.tar"
size=$(du -sb "$layout/blobs" | cut -f1)
step "done: $layout (tag $version), $((size / 1024 / 1024)) MiB compressed," \
    "$(du -sm "$rootfs" | cut -f1) MiB unpacked"
echo "OCI layout: $layout:$version"
