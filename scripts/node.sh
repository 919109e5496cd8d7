# shellcheck shell=bash
# Sourced by scripts that run immutd or its tests, after `npm run build`:
# makes sure the `node` on PATH is one package.json's "engines" allows
# (dist/src/cli/node-version.js decides). If it is not (Debian 12 ships Node 18,
# and many machines still have 20), Node.js $IMMUTD_NODE (default 24, the
# container image's) is fetched once from the npm registry's `node` package
# into .node/ and put first on PATH for the rest of the script.
# .ci/run uses immutd_install_node to fetch each Node.js version it tests.

# Installs the npm packages if they are missing. --ignore-scripts: the one
# install script, better-sqlite3's implicit `node-gyp rebuild`, only finds its
# prebuilt binary and does nothing, but it first downloads Node's headers from
# nodejs.org, which fails offline. On an older Node.js npm warns about
# "engines"; immutd_use_supported_node fetches a supported one after the build.
immutd_install_deps() {
  [ -d node_modules ] && return 0
  echo "== installing the npm packages" >&2
  npm ci --no-audit --no-fund --ignore-scripts
}

# Prints the directory with bin/node of the `node` package installed under $1, if any.
immutd_node_home() {
  local home
  home=$(find "$1/node_modules/node/node_modules" -maxdepth 1 -name 'node-linux-*' -print -quit 2>/dev/null || true)
  [ -n "$home" ] && [ -x "$home/bin/node" ] && echo "$home"
}

# Installs node@$1 under $2 and prints the directory with bin/node.
immutd_install_node() {
  local version=$1 dir=$2 home
  npm install --prefix "$dir" --no-save --no-package-lock --no-audit --no-fund \
    --loglevel=error "node@$version" >&2
  if ! home=$(immutd_node_home "$dir"); then
    echo "node@$version from the npm registry has no bin/node under $dir" >&2
    return 1
  fi
  echo "$home"
}

immutd_use_supported_node() {
  local why home dir want=${IMMUTD_NODE:-24}
  if why=$(node dist/src/cli/node-version.js 2>&1); then return 0; fi
  dir="$PWD/.node/$want"
  if ! home=$(immutd_node_home "$dir"); then
    echo "== $why: fetching Node.js $want from the npm registry into .node/" >&2
    mkdir -p "$dir"
    chmod 0755 "$PWD/.node" "$dir" # tests run node as other users too
    home=$(immutd_install_node "$want" "$dir")
  fi
  export PATH="$home/bin:$PATH"
  why=$(node dist/src/cli/node-version.js 2>&1) || { echo "$why" >&2; return 1; }
  echo "== using Node.js $(node --version) from $home" >&2
}
