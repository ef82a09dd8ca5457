#!/usr/bin/env bash
# Installs the real, unmodified stream manager client SDKs into a cache folder
# (idempotent). Prints nothing but progress; exits non-zero if an install fails.
#
#   py37-greengrasssdk-1.5.0   Python 3.7 (pyenv), greengrasssdk==1.5.0 (Greengrass 1.10 SDK)
#   py311-greengrasssdk-1.6.1  Python 3.11, greengrasssdk==1.6.1
#   py311-stream-manager-1.1.2 Python 3.11, stream-manager==1.1.2
#   node-core-sdk-1.7.0        npm aws-greengrass-core-sdk@1.7.0
#
# The three Python SDKs pin different cbor2 releases, hence one venv each.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${WEIR_COMPAT_CACHE:-$here/../target/compat-cache}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"

make_venv() { # name python-selector requirement
  local name="$1" pyver="$2" req="$3" dir="$cache/$1"
  if [ -f "$dir/.installed" ] && [ "$(cat "$dir/.installed")" = "$req" ]; then return 0; fi
  echo "setup-clients: installing $req into $dir" >&2
  rm -rf "$dir"
  if [ "$pyver" = "3.7" ]; then
    PYENV_VERSION=3.7.16 python -m venv "$dir"
  else
    PYENV_VERSION=3.11.7 python -m venv "$dir"
  fi
  "$dir/bin/python" -m pip install --quiet "$req" >&2
  echo "$req" > "$dir/.installed"
}

make_venv py37-greengrasssdk-1.5.0 3.7 greengrasssdk==1.5.0
make_venv py311-greengrasssdk-1.6.1 3.11 greengrasssdk==1.6.1
make_venv py311-stream-manager-1.1.2 3.11 stream-manager==1.1.2

node_dir="$cache/node-core-sdk-1.7.0"
if [ ! -f "$node_dir/.installed" ]; then
  echo "setup-clients: installing aws-greengrass-core-sdk@1.7.0 into $node_dir" >&2
  rm -rf "$node_dir"; mkdir -p "$node_dir"
  (cd "$node_dir" && echo '{"name":"weir-compat-node","private":true}' > package.json \
     && npm install --silent --no-audit --no-fund aws-greengrass-core-sdk@1.7.0 >&2)
  echo "aws-greengrass-core-sdk@1.7.0" > "$node_dir/.installed"
fi
echo "$cache"
