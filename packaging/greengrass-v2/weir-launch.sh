#!/bin/sh
# Starts the weir binary of this machine's architecture from the artifact
# folder this script is in (the component ships one binary per
# architecture: weir-x86_64, weir-aarch64, weir-armv7, ...). The recipe's
# Setenv has already put the component configuration into the environment.
dir=$(dirname "$0")
case "$(uname -m)" in
  x86_64 | amd64) arch=x86_64 ;;
  aarch64 | arm64 | armv8b) arch=aarch64 ;;
  armv7* | armv8l) arch=armv7 ;;
  armv6*) arch=armv6 ;;
  *) arch=$(uname -m) ;;
esac
bin="$dir/weir-$arch"
if [ ! -f "$bin" ]; then
  echo "weir-launch: no weir binary for $(uname -m) in $dir (this component version has: $(cd "$dir" && ls weir-* 2>/dev/null | grep -v launch | tr '\n' ' '))" >&2
  exit 1
fi
# The genuine default store is the component's work folder for the root
# /greengrass/v2. On a device with another root (nucleus lite's is usually
# /var/lib/greengrass) that path cannot be made; both nuclei start the
# component in its work folder, so the same meaning is the current folder.
genuine_store=/greengrass/v2/work/aws.greengrass.StreamManager
if [ "${STREAM_MANAGER_STORE_ROOT_DIR:-}" = "$genuine_store" ] && [ ! -d /greengrass/v2 ]; then
  echo "weir-launch: no /greengrass/v2 here: the default store $genuine_store is this component's work folder $PWD" >&2
  STREAM_MANAGER_STORE_ROOT_DIR=$PWD
  export STREAM_MANAGER_STORE_ROOT_DIR
fi
if [ -n "${JVM_ARGS:-}" ]; then
  echo "weir-launch: JVM_ARGS is set ($JVM_ARGS) and ignored: weir has no JVM" >&2
fi
# The recipe gives the binaries Execute: OWNER; say so if that was lost.
if [ ! -x "$bin" ]; then
  echo "weir-launch: $bin is not executable (the recipe's artifact Permission must be Execute: OWNER)" >&2
  exit 1
fi
exec "$bin"
