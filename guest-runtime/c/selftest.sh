#!/usr/bin/env bash
# Native self-test of the xos C runtime: compiles the runtime's pure parts
# (printf engine, malloc, string, stdlib, ctype) and io.c (against a
# simulated monitor, -DXOS_HOSTED_TEST) with the guest flags, renames their
# symbols to xt_* so they cannot clash with the host libc, links them with
# selftest/selftest.c and runs it: printf output is compared with glibc's
# snprintf, strto*/ctype/string functions with glibc's, malloc is
# stress-tested, and io.c's output records and stdin handling are checked.
# Exits non-zero on any mismatch. Usage: guest-runtime/c/selftest.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
gcc="${XOS_GCC:-gcc}"
command -v "$gcc" >/dev/null 2>&1 || { echo "selftest: '$gcc' not found" >&2; exit 2; }
command -v objcopy >/dev/null 2>&1 || { echo "selftest: objcopy not found" >&2; exit 2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

gcc_include="$("$gcc" -print-file-name=include)"
flags=(
    -std=gnu11 -O2 -ffreestanding -fno-pic -mno-red-zone
    -fno-stack-protector -fno-asynchronous-unwind-tables
    -nostdinc -isystem "$gcc_include" -I "$here/include" -I "$here"
    -Wall -Wextra -Werror -DXOS_HOSTED_TEST
)
for src in format malloc string stdlib ctype io; do
    "$gcc" "${flags[@]}" -c "$here/src/$src.c" -o "$work/$src.o"
    objcopy --prefix-symbols=xt_ "$work/$src.o"
done
"$gcc" -std=gnu11 -O2 -no-pie -Wall -Wextra -Wno-format -Wno-stringop-truncation -Werror \
    "$here/selftest/selftest.c" "$work"/*.o -lm -o "$work/selftest"
"$work/selftest"
