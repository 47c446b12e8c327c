#!/bin/sh
# What the device already holds: DIR PATH...  Creates DIR, prints "free KIB" for the filesystem DIR is
# on, then "<sha256 or -> PATH" for each PATH ("-": missing or not hashable).  One round trip tells the
# host which uploads it can skip and whether the rest fit.
mkdir -p "$1" 2>/dev/null
free=$(df -Pk "$1" 2>/dev/null | tail -n 1 | awk '{print $4}')
echo "free ${free:--}"
shift
for f in "$@"; do
  s=
  if [ -f "$f" ]; then s=$(sha256sum "$f" 2>/dev/null | cut -d' ' -f1); fi
  echo "${s:--} $f"
done
