#!/usr/bin/env bash
# Lays out weir as the Greengrass v2 component aws.greengrass.StreamManager:
#
#   OUT/recipes/aws.greengrass.StreamManager-VERSION.yaml
#   OUT/artifacts/aws.greengrass.StreamManager/VERSION/weir-launch.sh
#   OUT/artifacts/aws.greengrass.StreamManager/VERSION/weir-<arch>   (one per binary)
#
# ready for a local deployment on a device:
#
#   sudo greengrass-cli deployment create --recipeDir OUT/recipes \
#     --artifactDir OUT/artifacts --merge aws.greengrass.StreamManager=VERSION
#
# or for upload: copy OUT/artifacts/aws.greengrass.StreamManager/VERSION/* to the
# S3 prefix given with --uri-prefix, then
#   aws greengrassv2 create-component-version --inline-recipe fileb://OUT/recipes/...yaml
#
# Usage: build-component.sh [--version 2.9.0] [--out DIR] [--uri-prefix s3://BUCKET/PATH]
#                           [BINARY | ARCH=BINARY]...
#   BINARY     a weir executable (default: target/release/weir; build it first with
#              `cargo build --release`, or a cross build per architecture). Its
#              architecture is read from its ELF header; ARCH=BINARY names it
#              instead (x86_64, aarch64, armv7, armv6: what weir-launch.sh maps
#              `uname -m` to).
#   --version  the component version (default 2.9.0; see README.md for why 2.x and
#              above the public versions).
#   --uri-prefix  where the artifacts will be uploaded; the recipe's artifact URIs
#              are PREFIX/aws.greengrass.StreamManager/VERSION/<file> (default
#              s3://YOUR-BUCKET/artifacts: fine for local deployments, which take
#              the files from --artifactDir by name).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
name=aws.greengrass.StreamManager
version=2.9.0
out="$root/target/greengrass-component"
prefix=s3://YOUR-BUCKET/artifacts
bins=()
while [ $# -gt 0 ]; do
  case "$1" in
    --version) version="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --uri-prefix) prefix="${2%/}"; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "build-component: unknown option $1" >&2; exit 2 ;;
    *) bins+=("$1"); shift ;;
  esac
done
[ ${#bins[@]} -gt 0 ] || bins=("$root/target/release/weir")
if ! [[ "$version" =~ ^2\.[0-9]+\.[0-9]+$ ]]; then
  echo "build-component: version $version is not 2.x.y (clients depend on ^2.0.0)" >&2; exit 2
fi

elf_arch() { # the architecture of an ELF executable, from e_machine (bytes 18-19, little-endian)
  local machine
  if [ "$(head -c 4 "$1" | od -An -c | tr -d ' ')" != '177ELF' ]; then
    echo "build-component: $1 is not an ELF executable" >&2; return 1
  fi
  machine=$(od -An -tu2 -j18 -N2 "$1" | tr -d ' ')
  case "$machine" in
    62) echo x86_64 ;;
    183) echo aarch64 ;;
    40) echo armv7 ;;
    *) echo "build-component: unknown ELF machine $machine in $1: name it ARCH=$1" >&2; return 1 ;;
  esac
}

art="$out/artifacts/$name/$version"
rm -rf "$art"
mkdir -p "$art" "$out/recipes"
entries=""
add_entry() { # file execute
  entries+="      - Uri: $prefix/$name/$version/$1"$'\n'
  entries+="        Permission:"$'\n'
  entries+="          Read: OWNER"$'\n'
  entries+="          Execute: $2"$'\n'
}
install -m 0644 "$here/weir-launch.sh" "$art/weir-launch.sh"
add_entry weir-launch.sh NONE
for b in "${bins[@]}"; do
  if [[ "$b" == *=* ]]; then arch="${b%%=*}"; b="${b#*=}"; else arch=""; fi
  if [ ! -f "$b" ]; then
    echo "build-component: no binary at $b (run 'cargo build --release' first)" >&2; exit 1
  fi
  [ -n "$arch" ] || arch="$(elf_arch "$b")"
  if [ -e "$art/weir-$arch" ]; then echo "build-component: two binaries for $arch" >&2; exit 2; fi
  install -m 0755 "$b" "$art/weir-$arch"
  add_entry "weir-$arch" OWNER
  echo "build-component: weir-$arch <- $b" >&2
done

recipe="$out/recipes/$name-$version.yaml"
VERSION="$version" ENTRIES="$entries" python3 - "$here/recipe.yaml" "$recipe" <<'PY'
import os, sys
text = open(sys.argv[1]).read()
entries = os.environ["ENTRIES"].rstrip("\n")
for marker in ("@LITE_ARTIFACTS@", "@CLASSIC_ARTIFACTS@"):
    assert marker in text, marker
    text = text.replace(marker, entries)
text = text.replace("@COMPONENT_VERSION@", os.environ["VERSION"])
assert "@" + "COMPONENT" not in text
open(sys.argv[2], "w").write(text)
PY
echo "build-component: recipe $recipe" >&2
echo "build-component: artifacts $art" >&2
echo "$out"
