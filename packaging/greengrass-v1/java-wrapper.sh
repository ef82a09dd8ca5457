#!/bin/sh
# weir-gg1-java-wrapper (this line marks the file as ours for install.sh/uninstall.sh)
#
# Installed as `java8` / `java` ahead of the real JVM on the Greengrass v1
# daemon's PATH. When the command line names the stream manager's main class,
# runs weir instead, with the environment the daemon gave the system Lambda
# GGStreamManager (STREAM_MANAGER_* parameters, AWS_CONTAINER_* token and
# credentials URI); every other command line goes to the real JVM unchanged.
# install.sh writes the two paths below; the environment can override them.
WEIR_BIN="${WEIR_GG1_WEIR_BIN:-@WEIR_BIN@}"
REAL_JAVA="${WEIR_GG1_REAL_JAVA:-@REAL_JAVA@}"
for arg in "$@"; do
  case "$arg" in
    -*) ;;
    com.amazonaws.iot.greengrass.streammanager.StreamManagerService | *.streammanager.StreamManagerService)
      echo "weir-gg1-java-wrapper: $arg -> $WEIR_BIN (the JVM options are ignored)" >&2
      exec "$WEIR_BIN"
      ;;
  esac
done
exec "$REAL_JAVA" "$@"
