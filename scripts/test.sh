#!/usr/bin/env bash
# The whole test suite: type-check and build, lint, start a throwaway Ceph RGW
# (scripts/s3-test-server.sh), run every test against it, stop it.
# The real-server tests fail (never skip) when the server is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/node.sh
immutd_install_deps
npm run --silent build
npx biome check .
immutd_use_supported_node # before anything runs immutd

# Some tests run immutd as other users (nobody; the image's uid 10001): as root,
# make sure they can reach the build (a parent directory made with mktemp -d is 0700).
if [ "$(id -u)" = 0 ] && ! setpriv --reuid=65534 --regid=65534 --clear-groups test -r "$PWD/dist/src/cli.js"; then
  echo "test.sh: user nobody cannot read $PWD/dist/src/cli.js: give every directory above it o+x (chmod o+x DIR)" >&2
  exit 1
fi

own_server=0
if [ -z "${IMMUTD_TEST_S3_ENV:-}" ]; then
  export IMMUTD_S3_DIR="${IMMUTD_S3_DIR:-$PWD/.s3-test}"
  bash scripts/s3-test-server.sh start "$IMMUTD_S3_DIR"
  export IMMUTD_TEST_S3_ENV="$IMMUTD_S3_DIR/env.json"
  own_server=1
fi
stop() { [ "$own_server" = 1 ] && bash scripts/s3-test-server.sh stop "$IMMUTD_S3_DIR" >/dev/null 2>&1 || true; }
trap stop EXIT

mapfile -t files < <(find dist/test -maxdepth 1 -name '*.test.js' | sort)
if [ "$#" -gt 0 ]; then files=("$@"); fi
node --test --test-reporter=spec "${files[@]}"
