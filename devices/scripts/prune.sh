#!/bin/sh
# Bound a cache folder: DIR MAX_KIB [KEEP...].  Files are deleted least recently used first (a use
# touches the file) until the folder holds at most MAX_KIB; KEEP names files never deleted (the ones the
# running command needs).  MAX_KIB=0 empties it (`edgenas device clean`).  Prints "kept KIB deleted N".
d=$1
max=$2
shift 2
[ -d "$d" ] || { echo "kept 0 deleted 0"; exit 0; }
total=$(du -sk "$d" 2>/dev/null | cut -f1)
total=${total:-0}
n=0
# shellcheck disable=SC2012,SC2045  # names are edgenas' own (sha256 + suffix): no newlines or odd bytes
for f in $(ls -tr "$d" 2>/dev/null); do
  [ "$total" -le "$max" ] && break
  keep=0
  for k in "$@"; do [ "$k" = "$f" ] && keep=1; done
  [ $keep = 1 ] && continue
  s=$(du -sk "$d/$f" 2>/dev/null | cut -f1)
  rm -rf "${d:?}/$f" && n=$((n + 1)) && total=$((total - ${s:-0}))
done
echo "kept $total deleted $n"
