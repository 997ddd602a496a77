#!/bin/sh
# Stage the root file system of the edgeplex container image (see Containerfile):
#
#   image/stage.sh BINARY OUTDIR [SYSROOT]
#
# Copies BINARY to OUTDIR/usr/bin/edgeplex (without debug info), and exactly the shared
# libraries it needs, as distroless images do: its ELF NEEDED entries, recursively, looked up
# under SYSROOT (default /; for a cross build the target's sysroot, e.g. /usr/aarch64-linux-gnu),
# placed in /lib/<multiarch triple>/, plus the dynamic loader at the path the binary names
# (PT_INTERP). Works for a foreign architecture too: it reads ELF headers, never runs the binary.
# Adds /etc/passwd and /etc/group (root and nobody) and a sticky /tmp. Needs readelf and objcopy
# (binutils; for arm64 on amd64, binutils-aarch64-linux-gnu's are used when present).
set -eu

bin=${1:?usage: image/stage.sh BINARY OUTDIR [SYSROOT]}
out=${2:?usage: image/stage.sh BINARY OUTDIR [SYSROOT]}
sysroot=${3:-/}

machine=$(readelf -h "$bin" | sed -n 's/^ *Machine: *//p')
case "$machine" in
  *X86-64*) triple=x86_64-linux-gnu ;;
  *AArch64*) triple=aarch64-linux-gnu ;;
  *) echo "image/stage.sh: $bin is for \"$machine\"; supported: x86_64, aarch64" >&2; exit 64 ;;
esac
objcopy=objcopy
if command -v "$triple-objcopy" >/dev/null 2>&1; then objcopy=$triple-objcopy; fi

find_lib() {
  for d in "lib/$triple" "usr/lib/$triple" lib usr/lib lib64 usr/lib64; do
    if [ -e "$sysroot/$d/$1" ]; then echo "$sysroot/$d/$1"; return 0; fi
  done
  echo "image/stage.sh: $1 (needed by the binary) not found under $sysroot; pass the target's sysroot" >&2
  exit 66
}

needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }

rm -rf "$out"
mkdir -p "$out/usr/bin" "$out/lib/$triple" "$out/etc" "$out/tmp"
chmod 1777 "$out/tmp"
"$objcopy" --strip-debug "$bin" "$out/usr/bin/edgeplex"
chmod 0755 "$out/usr/bin/edgeplex"

interp=$(readelf -l "$bin" | sed -n 's/.*\[Requesting program interpreter: \(.*\)\]/\1/p')
if [ -n "$interp" ]; then
  mkdir -p "$out$(dirname "$interp")"
  cp -L "$(find_lib "$(basename "$interp")")" "$out$interp"
fi

todo=$(needed "$bin")
while [ -n "$todo" ]; do
  next=""
  for lib in $todo; do
    [ -e "$out/lib/$triple/$lib" ] && continue
    # The loader is already in place, at the path the binary names.
    [ -n "$interp" ] && [ "$lib" = "$(basename "$interp")" ] && continue
    src=$(find_lib "$lib")
    cp -L "$src" "$out/lib/$triple/$lib"
    next="$next $(needed "$src")"
  done
  todo=$(echo $next)
done

printf 'root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n' > "$out/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$out/etc/group"
echo "staged $(du -sk "$out" | cut -f1) KiB for $triple in $out:"
(cd "$out" && find . -type f | sort | sed 's/^\./  /')
