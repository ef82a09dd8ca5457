#!/usr/bin/env bash
# Installs the real, unmodified stream manager client SDKs into a cache folder
# (idempotent). Prints nothing but progress; exits non-zero if an install fails.
#
#   py37-greengrasssdk-1.5.0   Python 3.7 (pyenv), greengrasssdk==1.5.0 (Greengrass 1.10 SDK)
#   py311-greengrasssdk-1.6.1  Python 3.11, greengrasssdk==1.6.1
#   py311-stream-manager-1.1.2 Python 3.11, stream-manager==1.1.2 + pyyaml==6.0.2 (the drivers'
#                              venv; test_packaging.py parses the Greengrass recipe with PyYAML)
#   node-core-sdk-1.7.0        npm aws-greengrass-core-sdk@1.7.0
#   py311-moto-5.2.5           Python 3.11, moto[server]==5.2.5 + boto3==1.44.8 (Kinesis stand-in,
#                              and the real boto3 that test_cloud_standins.py checks the stand-ins with)
#   node-kinesalite-3.3.3      npm kinesalite@3.3.3 (a second Kinesis stand-in)
#   py311-awsiotsdk-1.31.0     Python 3.11, awsiotsdk==1.31.0 + awscrt==0.36.1 (the real Greengrass IPC
#                              client that test_ipc_auth.py checks the nucleus stand-in with)
#
# The three Python SDKs pin different cbor2 releases, hence one venv each; moto
# and boto3 get theirs too (the drivers' venv stays without them).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${WEIR_COMPAT_CACHE:-$here/../target/compat-cache}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"

make_venv() { # name python-selector requirement...
  local name="$1" pyver="$2" dir="$cache/$1"
  local -a reqs=("${@:3}")
  local req="${reqs[*]}"
  if [ -f "$dir/.installed" ] && [ "$(cat "$dir/.installed")" = "$req" ]; then return 0; fi
  echo "setup-clients: installing $req into $dir" >&2
  rm -rf "$dir"
  if [ "$pyver" = "3.7" ]; then
    PYENV_VERSION=3.7.16 python -m venv "$dir"
  else
    PYENV_VERSION=3.11.7 python -m venv "$dir"
  fi
  "$dir/bin/python" -m pip install --quiet "${reqs[@]}" >&2
  echo "$req" > "$dir/.installed"
}

make_venv py37-greengrasssdk-1.5.0 3.7 greengrasssdk==1.5.0
make_venv py311-greengrasssdk-1.6.1 3.11 greengrasssdk==1.6.1
make_venv py311-stream-manager-1.1.2 3.11 stream-manager==1.1.2 pyyaml==6.0.2
make_venv py311-moto-5.2.5 3.11 'moto[server]==5.2.5' boto3==1.44.8
make_venv py311-awsiotsdk-1.31.0 3.11 awsiotsdk==1.31.0 awscrt==0.36.1

make_node() { # folder package@version
  local dir="$cache/$1" pkg="$2"
  if [ -f "$dir/.installed" ] && [ "$(cat "$dir/.installed")" = "$pkg" ]; then return 0; fi
  echo "setup-clients: installing $pkg into $dir" >&2
  rm -rf "$dir"; mkdir -p "$dir"
  (cd "$dir" && echo '{"name":"weir-compat-node","private":true}' > package.json \
     && npm install --silent --no-audit --no-fund "$pkg" >&2)
  echo "$pkg" > "$dir/.installed"
}

make_node node-core-sdk-1.7.0 aws-greengrass-core-sdk@1.7.0
make_node node-kinesalite-3.3.3 kinesalite@3.3.3
echo "$cache"
