#!/usr/bin/env bash
# Installs what building and running Myelin needs on a Debian 12 machine with
# the Rust toolchains as shipped: apt packages, the nightly's rust-src, and
# bpf-linker built against the nightly's LLVM. Idempotent and quick when
# everything is there already. Run as root.
set -euo pipefail

say() { printf '==> %s\n' "$*"; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup needs root (apt-get, network namespaces, eBPF): run it with sudo" >&2
    exit 1
  fi
}

# LLVM major of the nightly toolchain that builds the kernel programs.
nightly_llvm_major() {
  rustup run nightly rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p'
}

install_apt() {
  local llvm="$1" missing=()
  for pkg in iproute2 curl protobuf-compiler chromium prometheus "llvm-${llvm}-dev" libzstd-dev zlib1g-dev libpolly-"${llvm}"-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# Debian's etcd (the cluster store; the lab and the tests start their own members on
# ports of their own). Where an init system runs, installing etcd-server also starts
# the packaged service on 127.0.0.1:2379; nothing of Myelin uses it, so a fresh install
# stops it and keeps it from starting at boot (an etcd that was installed before is left
# as its owner set it up).
install_etcd() {
  local missing=()
  for pkg in etcd-server etcd-client; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  if [ -d /run/systemd/system ]; then
    systemctl disable --now etcd >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/etcd ]; then
    /etc/init.d/etcd stop >/dev/null 2>&1 || true
    update-rc.d etcd disable >/dev/null 2>&1 || true
  fi
}

# The container runtime the CNI plugin's tests drive: podman (with its CNI network
# backend), runc (crun refuses hosts with cgroup v1 and v2 mounted side by side),
# buildah to build the test image from busybox-static without any registry, and the
# reference CNI plugins to chain after myelin-cni. Podman's own units (auto-update,
# restart) are left to the init system: nothing of Myelin uses them.
install_container_runtime() {
  local missing=()
  for pkg in podman runc buildah busybox-static containernetworking-plugins; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_rust_parts() {
  if ! rustup toolchain list | grep -q '^nightly'; then
    say "installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
  fi
  if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
    say "adding rust-src to nightly"
    rustup component add rust-src --toolchain nightly
  fi
}

install_bpf_linker() {
  local llvm="$1" have=""
  if command -v bpf-linker >/dev/null; then
    have=$(ldd "$(command -v bpf-linker)" | sed -n 's/.*libLLVM\.so\.\([0-9]*\).*/\1/p' | head -n1)
  fi
  if [ "$have" != "$llvm" ]; then
    say "building bpf-linker against LLVM ${llvm} (a few minutes, once)"
    LLVM_PREFIX="/usr/lib/llvm-${llvm}" cargo install --locked bpf-linker \
      --no-default-features --features "llvm-${llvm}" --force
  fi
}

# A full test run peaks at about 3.5 GiB under the target directory (measured in CI);
# running out mid-build fails with a compiler I/O error that does not say why.
check_disk() {
  local dir="${CARGO_TARGET_DIR:-$(pwd)/target}" free_kib need_kib=$((5 * 1024 * 1024))
  while [ ! -d "$dir" ]; do dir=$(dirname "$dir"); done
  free_kib=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
  if [ "${free_kib:-0}" -lt "$need_kib" ]; then
    echo "warning: only $((free_kib / 1024)) MiB free on $(df -P "$dir" | awk 'NR == 2 { print $6 }') for $dir;" \
      "building and testing Myelin needs about 5 GiB: free some (cargo clean in old clones)" \
      "or point CARGO_TARGET_DIR at a disk with room" >&2
  fi
}

need_root
check_disk
install_rust_parts
LLVM_MAJOR=$(nightly_llvm_major)
[ -n "$LLVM_MAJOR" ] || { echo "cannot read the nightly's LLVM version" >&2; exit 1; }
install_apt "$LLVM_MAJOR"
install_etcd
install_container_runtime
install_bpf_linker "$LLVM_MAJOR"
say "toolchain ready (nightly LLVM ${LLVM_MAJOR}, bpf-linker $(bpf-linker --version | awk '{print $2}'))"
