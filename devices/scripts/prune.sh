#!/bin/sh
# Bound a cache folder: DIR MAX_KIB [KEEP...].  Files are deleted least recently used first (a use
# touches the file) until the folder holds at most MAX_KIB; KEEP names files never deleted (the ones the
# running command needs).  MAX_KIB=0 empties it (`edgenas device clean`).
# Only files edgenas names are ever deleted: a content hash (16 or 64 lower-case hex digits) plus a
# short lower-case suffix (<sha256>.tflite, <sha256>.json, <sha256-16>.npy).  Anything else a user
# keeps in the folder (a workdir that already held files) is left alone, and counts toward the size.
# First, hidden upload temps (.NAME.edgenas-tmp-*) that a killed upload left are removed: one is
# left alone while any process we can see has it open (the writer of a running upload: cat, sftp,
# adbd) or while it changed within the last TMP_MIN minutes (a writer we cannot see, e.g. another
# user's; a live upload writes continuously and the longest transfer timeout is 10 minutes).  Both
# must say "unused": the open-file check does not trust the wall clock, which jumps on boards
# without an RTC, and the age covers what /proc does not show.
# Prints "kept KIB deleted N temps M".
TMP_MIN=60
H4='[0-9a-f][0-9a-f][0-9a-f][0-9a-f]'
H16=$H4$H4$H4$H4
# ours NAME: NAME is a cache entry edgenas wrote.
ours() {
  # shellcheck disable=SC2254  # the variables are patterns on purpose
  case "$1" in $H16.*|$H16$H16$H16$H16.*) ;; *) return 1 ;; esac
  case "${1#*.}" in ''|*[!a-z0-9]*) return 1 ;; esac
}
d=$1
max=$2
shift 2
[ -d "$d" ] || { echo "kept 0 deleted 0 temps 0"; exit 0; }
t=0
abs=$(cd "$d" 2>/dev/null && pwd -P)
if [ -n "$abs" ]; then
  # Every open file of every process we may read, as "... -> /path" lines (one ls, not one per fd).
  # shellcheck disable=SC2010,SC2012  # only the link targets are read, never names
  open=$(ls -l /proc/[0-9]*/fd/ 2>/dev/null | grep -F '.edgenas-tmp-')
  # -mmin is in GNU, busybox and toybox find; where it is missing nothing is deleted.  The list is
  # read through a here-document: paths may hold spaces, and the count must stay in this shell.
  old=$(find "$abs" -maxdepth 1 -type f -name '.*.edgenas-tmp-*' -mmin +"$TMP_MIN" 2>/dev/null)
  while IFS= read -r f; do
    [ -n "$f" ] || continue
    case "$open" in *" -> $f"*) continue ;; esac
    rm -f -- "$f" && t=$((t + 1))
  done <<EOF
$old
EOF
fi
total=$(du -sk "$d" 2>/dev/null | cut -f1)
total=${total:-0}
n=0
# shellcheck disable=SC2012,SC2045  # only edgenas' names (ours) are acted on: no blanks or odd bytes
for f in $(ls -tr "$d" 2>/dev/null); do
  [ "$total" -le "$max" ] && break
  keep=0
  for k in "$@"; do [ "$k" = "$f" ] && keep=1; done
  [ $keep = 1 ] && continue
  ours "$f" || continue
  if [ ! -f "$d/$f" ] || [ -L "$d/$f" ]; then continue; fi
  s=$(du -sk "$d/$f" 2>/dev/null | cut -f1)
  rm -f -- "${d:?}/$f" && n=$((n + 1)) && total=$((total - ${s:-0}))
done
echo "kept $total deleted $n temps $t"
