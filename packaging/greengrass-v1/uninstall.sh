#!/bin/sh
# Puts a Greengrass v1 core back on the Java stream manager: removes the
# wrappers install.sh wrote (only files that carry its marker). Then restart
# the daemon. weir's store folder is left as it is.
#
# Usage: uninstall.sh [--bin-dir /usr/local/bin] [--names "java8 java"]
set -eu
bin_dir=/usr/local/bin
names="java8 java"
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --names) names=$2; shift 2 ;;
    *) echo "uninstall.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
for n in $names; do
  target="$bin_dir/$n"
  if [ -e "$target" ]; then
    if grep -q weir-gg1-java-wrapper "$target" 2>/dev/null; then
      rm -f "$target"
      echo "uninstall.sh: removed $target"
    else
      echo "uninstall.sh: $target is not the wrapper; left alone" >&2
    fi
  fi
done
echo "uninstall.sh: now restart the Greengrass daemon (e.g. /greengrass/ggc/core/greengrassd restart)"
