#!/usr/bin/env bash
# Builds the Debian package of weir from a staged tree with dpkg-deb (no
# cargo-deb: the same package, without building a cargo plugin first).
#
# Usage: build-deb.sh [--binary PATH] [--version V] [--out DIR] [--compress xz|gzip]
#   --binary  the weir executable (default target/release/weir; build it first with
#             `cargo build --release`); copied with its debug information stripped
#   --version the package version (default: Cargo.toml's)
#   --out     where the .deb goes (default target/debian); its path is printed last
#   --compress the archive's compression (default xz, the smallest; gzip builds faster)
#
# Contents: /usr/bin/weir, /lib/systemd/system/weir.service,
# /etc/weir/weir.toml and weir.env (conffiles), /usr/share/doc/weir/. Maintainer scripts in
# maintainer/: postinst (user weir, /var/lib/weir, enable + start the
# service where systemd runs), prerm (stop), postrm (purge: store, user).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
binary="$root/target/release/weir"
version=""
out="$root/target/debian"
compress=xz
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --compress) compress="$2"; shift 2 ;;
    *) echo "build-deb: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -f "$binary" ] || { echo "build-deb: no binary at $binary (run 'cargo build --release')" >&2; exit 1; }
if [ -z "$version" ]; then
  version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
fi
case "$(od -An -tu2 -j18 -N2 "$binary" | tr -d ' ')" in
  62) arch=amd64 ;;
  183) arch=arm64 ;;
  40) arch=armhf ;;
  *) echo "build-deb: unknown architecture of $binary" >&2; exit 1 ;;
esac
# The newest glibc symbol version the binary needs.
glibc="$(grep -ao 'GLIBC_2\.[0-9]*' "$binary" | sort -uV | tail -1 | sed 's/GLIBC_//')"

mkdir -p "$out"
stage="$(mktemp -d "$out/stage.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"
install -d "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" "$stage/etc/weir" \
  "$stage/usr/share/doc/weir"
strip --strip-debug -o "$stage/usr/bin/weir" "$binary"
chmod 0755 "$stage/usr/bin/weir"
install -m 0644 "$here/weir.service" "$stage/lib/systemd/system/weir.service"
install -m 0644 "$here/weir.toml" "$stage/etc/weir/weir.toml"
install -m 0644 "$here/weir.env" "$stage/etc/weir/weir.env"
install -m 0644 "$here/README.Debian" "$stage/usr/share/doc/weir/README.Debian"
install -m 0644 "$root/README.md" "$stage/usr/share/doc/weir/README.md"
cat > "$stage/usr/share/doc/weir/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: weir

Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
for s in postinst prerm postrm; do install -m 0755 "$here/maintainer/$s" "$stage/DEBIAN/$s"; done
printf '%s\n' /etc/weir/weir.toml /etc/weir/weir.env > "$stage/DEBIAN/conffiles"
size_kb="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
cat > "$stage/DEBIAN/control" <<CONTROL
Package: weir
Version: $version
Architecture: $arch
Maintainer: weir maintainers <weir@localhost>
Installed-Size: $size_kb
Depends: libc6 (>= $glibc), adduser
Section: net
Priority: optional
Description: drop-in replacement for the AWS IoT Greengrass stream manager server
 weir speaks the stream manager's wire protocol, so the unmodified stream
 manager client SDKs (Python, Java, Node) connect to it; it keeps message
 streams in a crash-safe file log and exports them to Kinesis and IoT
 Analytics, configured by the stream manager's own variables, without a JVM.
CONTROL
deb="$out/weir_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"$compress" --build "$stage" "$deb" >&2
echo "$deb"
