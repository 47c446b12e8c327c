#!/usr/bin/env bash
# Debian packages the test fleet stands on: real sshd, the real adb client/server, iproute2
# (network namespaces, veth, tc), nftables (fault injection), qemu-user (the emulated ARM devices,
# tests/support/fleet/arm.py), shellcheck (lints the on-device shell scripts) and faketime (a device whose
# clock jumps).  Installs only what is missing, only as root; otherwise it says what is missing and
# the fleet fixtures explain what they skip.
set -euo pipefail
need=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v adb >/dev/null 2>&1 || need+=(adb)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need+=(nftables)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
{ command -v qemu-aarch64 && command -v qemu-arm; } >/dev/null 2>&1 || need+=(qemu-user)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
command -v faketime >/dev/null 2>&1 || need+=(faketime)  # a device whose clock jumps (test_faults)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != "0" ]; then
  echo "test fleet: missing Debian packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
  exit 0
fi
echo "installing Debian packages for the test fleet: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
