# Shared by scripts/setup and scripts/test. Source it; do not run it.
# Works as root and as a normal user with sudo, on Debian 12 / Ubuntu 24.04 or newer.

COWORK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${COWORK_VENV:-$COWORK_ROOT/.venv}"
# Every Python package with its exact version and hashes; refreshed by scripts/lock.
LOCK_FILE="$COWORK_ROOT/requirements/lock.txt"
# The same pins without the development tools: what the Debian package installs.
APP_LOCK_FILE="$COWORK_ROOT/requirements/lock-app.txt"

# System packages: the hypervisor, image build tools, the keyring, and Qt's offscreen needs.
APT_PACKAGES=(
  qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev pkg-config
  gcc python3-dev python3-venv git ca-certificates
  mmdebstrap debootstrap debian-archive-keyring e2fsprogs uidmap cpio busybox-static
  gnome-keyring dbus dbus-x11 libsecret-1-0
  libegl1 libgl1 libxkbcommon0 libfontconfig1 libfreetype6 libglib2.0-0 fonts-dejavu-core
)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "this step needs root: run it as root or install sudo ($*)"
  fi
}

install_system_packages() {
  local missing=() pkg
  for pkg in "${APT_PACKAGES[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    say "system packages: all present"
    return
  fi
  say "installing system packages: ${missing[*]}"
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: cowork's installer supports Debian and Ubuntu"
  # Never let a package start a service of its own while we install it (e.g. openssh-server).
  local guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    guard=/usr/sbin/policy-rc.d
    as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || { [ -n "$guard" ] && as_root rm -f "$guard"; die "apt-get install failed"; }
  [ -n "$guard" ] && as_root rm -f "$guard"
  return 0
}

pick_python() {
  local py
  for py in python3.13 python3.12 python3.11 python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$py"; return
    fi
  done
  die "cowork needs Python 3.11 or newer (python3 --version says $(python3 --version 2>&1))"
}

# The environment is installed from the lock alone (--require-hashes: every file checked),
# then cowork itself without resolving anything. This works with the pip that Debian's
# python3-venv brings (23.0); pip is not upgraded, so nothing unpinned enters.
ensure_venv() {
  local stamp="$VENV/.cowork-installed" want
  [ -f "$LOCK_FILE" ] || die "$LOCK_FILE is missing: run scripts/lock"
  want="$(cat "$COWORK_ROOT/pyproject.toml" "$LOCK_FILE" | sha256sum | cut -c1-16)"
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    say "Python environment: up to date ($VENV)"
    return
  fi
  say "creating the Python environment in $VENV (about 2 minutes the first time)"
  [ -x "$VENV/bin/python" ] || "$(pick_python)" -m venv "$VENV"
  "$VENV/bin/pip" install -q --use-pep517 --require-hashes -r "$LOCK_FILE"
  "$VENV/bin/pip" install -q --no-deps -e "$COWORK_ROOT[app,dev]"
  "$VENV/bin/pip" check >/dev/null || die "the Python environment has conflicting packages: $("$VENV/bin/pip" check)"
  echo "$want" > "$stamp"
}

has_systemd() { [ -d /run/systemd/system ]; }

# The per-user cowork service as a systemd --user unit where systemd runs; elsewhere the
# first cowork command that needs it starts it in the background, so nothing is installed.
install_daemon_unit() {
  if ! has_systemd || ! systemctl --user show-environment >/dev/null 2>&1; then
    say "no systemd user session here: cowork starts its service in the background when needed"
    return 0
  fi
  local dir="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
  mkdir -p "$dir"
  sed -e "s|@COWORK@|$VENV/bin/cowork|g" -e "s|@DOCS@|$COWORK_ROOT|g" \
    "$COWORK_ROOT/packaging/systemd/cowork-daemon.service" >"$dir/cowork-daemon.service"
  systemctl --user daemon-reload
  systemctl --user enable --now cowork-daemon.service
}

# Without udev, /dev/kvm stays root:root 0600; libvirt then re-probes QEMU on every call
# (seconds each). Give it the ownership udev would.
fix_kvm_device() {
  [ -e /dev/kvm ] || return 0
  getent group kvm >/dev/null || return 0
  [ "$(stat -c %G /dev/kvm)" = kvm ] && return 0
  as_root chgrp kvm /dev/kvm && as_root chmod 0660 /dev/kvm
}

# Root talks to libvirt's system daemon; a normal user's qemu:///session daemon starts by itself.
start_libvirt() {
  fix_kvm_device
  [ "$(id -u)" -eq 0 ] || return 0
  if has_systemd; then
    systemctl is-active --quiet libvirtd || systemctl start libvirtd
    systemctl is-active --quiet virtlogd || systemctl start virtlogd || true
    return 0
  fi
  pgrep -x virtlogd >/dev/null || virtlogd -d
  pgrep -x libvirtd >/dev/null || libvirtd -d
  local i
  for i in $(seq 1 50); do [ -S /run/libvirt/libvirt-sock ] && return 0; sleep 0.2; done
  die "libvirtd did not start (no /run/libvirt/libvirt-sock)"
}
