#!/bin/sh
# Makes a Greengrass v1 core start weir instead of the stream manager jar:
# installs java-wrapper.sh as `java8` and `java` in BIN_DIR, which must come
# before the real JVM on the Greengrass daemon's PATH (see README.md), then
# restart the daemon (greengrassd restart). Undo with uninstall.sh.
#
# Usage: install.sh [--bin-dir /usr/local/bin] [--weir /usr/local/bin/weir]
#                   [--real-java PATH] [--names "java8 java"]
#   --weir       the weir executable to run (must exist)
#   --real-java  the JVM every other Java Lambda keeps using (default: for each
#                name, the first executable of that name on PATH outside BIN_DIR,
#                else java8, else java)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin_dir=/usr/local/bin
weir=/usr/local/bin/weir
real_java=""
names="java8 java"
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --weir) weir=$2; shift 2 ;;
    --real-java) real_java=$2; shift 2 ;;
    --names) names=$2; shift 2 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
marker=weir-gg1-java-wrapper
if [ ! -x "$weir" ]; then echo "install.sh: no weir executable at $weir" >&2; exit 1; fi
bin_dir=$(cd "$bin_dir" && pwd)

find_real() { # name: the first NAME on PATH that is not in BIN_DIR and not our wrapper
  old_ifs=$IFS; IFS=:
  for d in $PATH; do
    [ -n "$d" ] || continue
    if [ -d "$d" ] && [ "$(cd "$d" && pwd)" = "$bin_dir" ]; then continue; fi
    if [ -x "$d/$1" ] && ! grep -q "$marker" "$d/$1" 2>/dev/null; then IFS=$old_ifs; echo "$d/$1"; return 0; fi
  done
  IFS=$old_ifs
  return 1
}
real_for() { # name: the JVM the wrapper called NAME hands other command lines to
  if [ -n "$real_java" ]; then echo "$real_java"; return 0; fi
  find_real "$1" || find_real java8 || find_real java
}
for n in $names; do
  r=$(real_for "$n" || true)
  if [ -z "$r" ]; then
    echo "install.sh: no $n, java8 or java on PATH outside $bin_dir; pass --real-java" >&2; exit 1
  fi
  if grep -q "$marker" "$r" 2>/dev/null; then
    echo "install.sh: $r is the wrapper itself" >&2; exit 1
  fi
done
for n in $names; do
  target="$bin_dir/$n"
  if [ -e "$target" ] && ! grep -q "$marker" "$target" 2>/dev/null; then
    echo "install.sh: $target exists and is not the wrapper; not replacing it (choose another --bin-dir)" >&2
    exit 1
  fi
done
for n in $names; do
  target="$bin_dir/$n"
  r=$(real_for "$n")
  sed -e "s|@WEIR_BIN@|$weir|" -e "s|@REAL_JAVA@|$r|" "$here/java-wrapper.sh" > "$target.tmp"
  chmod 0755 "$target.tmp"
  mv "$target.tmp" "$target"
  echo "install.sh: $target -> weir ($weir) for the stream manager, $r otherwise"
done
case ":$PATH:" in
  *":$bin_dir:"*) ;;
  *) echo "install.sh: note: $bin_dir is not on this shell's PATH; the Greengrass daemon's PATH must list it first" >&2 ;;
esac
echo "install.sh: now restart the Greengrass daemon (e.g. /greengrass/ggc/core/greengrassd restart)"
