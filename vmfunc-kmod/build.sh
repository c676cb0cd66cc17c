#!/usr/bin/env bash
# Build xos_vmfunc.ko against Debian 12's kernel headers (linux-headers-amd64,
# 6.1.x), with sparse (C=2) and W=1; fail on any warning. Idempotent.
#   vmfunc-kmod/build.sh            build (installs packages if missing: root)
#   vmfunc-kmod/build.sh clean      remove build products
# KDIR=/path/to/headers overrides the header directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

say() { printf '[vmfunc-kmod] %s\n' "$*"; }

packages=(linux-headers-amd64 build-essential kmod sparse)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    say "installing missing packages: ${missing[*]}"
    if [[ $(id -u) -ne 0 ]]; then
        say "error: need root to apt-get install ${missing[*]}" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
else
    say "packages present: ${packages[*]}"
fi

if [[ -z "${KDIR:-}" && -n "${XOS_KREL:-}" ]]; then
    # scripts/bochs/run passes the kernel release it boots.
    KDIR="/usr/src/linux-headers-${XOS_KREL}"
fi
if [[ -z "${KDIR:-}" ]]; then
    # The headers package the Debian metapackage depends on (not `uname -r`:
    # the build machine may run another kernel).
    dep="$(dpkg-query -W -f='${Depends}' linux-headers-amd64 |
        tr ',' '\n' | sed -n 's/^ *\(linux-headers-[0-9][^ ]*-amd64\).*/\1/p' | head -n1)"
    if [[ -z "$dep" ]]; then
        say "error: cannot find the headers package linux-headers-amd64 depends on" >&2
        exit 1
    fi
    KDIR="/usr/src/${dep}"
fi
if [[ ! -f "$KDIR/Makefile" ]]; then
    say "error: no kernel headers at $KDIR" >&2
    exit 1
fi

if [[ "${1:-}" == clean ]]; then
    say "cleaning in $here"
    make -C "$KDIR" M="$here" clean
    rm -f build.log
    exit 0
fi

say "building against $KDIR (sparse C=2, W=1)"
set +e
make -C "$KDIR" M="$here" C=2 CHECK=sparse W=1 modules 2>&1 | tee build.log
status=${PIPESTATUS[0]}
set -e
if ((status != 0)); then
    say "error: make failed ($status)" >&2
    exit "$status"
fi
if grep -n 'warning:' build.log; then
    say "error: the build printed warnings (see above)" >&2
    exit 1
fi
if [[ ! -f xos_vmfunc.ko ]]; then
    say "error: xos_vmfunc.ko was not produced" >&2
    exit 1
fi
say "ok: $here/xos_vmfunc.ko ($(modinfo -F vermagic xos_vmfunc.ko))"
