# syntax=docker/dockerfile:1
# The immutd image. Default command: `immutd run` (the daemon). Any other
# immutd command is given as arguments, e.g.
#   docker run --rm ... immutd restore JOB --to /restore
# README "Container and sidecar" has a compose file and the volumes to mount.
# test/container.rgw.test.ts replays this file's build and run steps outside a
# container (no container engine runs where the tests run); keep the build
# stage's RUN lines free of absolute paths so that the replay stays exact.

# Node.js 24 LTS (supported until April 2028). 26 works too:
# --build-arg NODE_VERSION=26; README "Node.js support" says why these.
ARG NODE_VERSION=24

FROM node:${NODE_VERSION}-trixie-slim AS build
WORKDIR /build
COPY package.json package-lock.json ./
# better-sqlite3 ships prebuilt Node-API binaries (Linux x64 and arm64), so
# nothing is compiled; --ignore-scripts skips its node-gyp step, which would
# only find that binary (and needs python3, which this image lacks).
RUN npm ci --no-audit --no-fund --ignore-scripts
COPY tsconfig.json ./
COPY src ./src
# The build bundles the command line into one file (dist/src/immutd.js).
COPY scripts/bundle.mjs ./scripts/bundle.mjs
# Compile, drop the dev dependencies, keep only this platform's SQLite binary
# (no sources, no other platforms' binaries), and prove that it loads: a
# platform without a prebuilt binary fails here, not at the first backup.
RUN npm run build \
 && npm prune --omit=dev --no-audit --no-fund --ignore-scripts \
 && rm -rf node_modules/better-sqlite3/deps node_modules/better-sqlite3/src \
 && find node_modules/better-sqlite3/prebuilds -type f \
      ! -name "linux-$(node -p process.arch).node" -delete \
 && node -e "new (require('better-sqlite3'))(':memory:').close()" \
 && chmod 0755 dist/src/cli.js

FROM node:${NODE_VERSION}-trixie-slim
# tini is PID 1: it passes SIGTERM on to immutd and reaps the processes that
# hooks and command sources leave behind. immutd runs as uid/gid 10001.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 immutd \
 && useradd --system --uid 10001 --gid immutd --home-dir /var/lib/immutd \
      --no-create-home --shell /usr/sbin/nologin immutd \
 && install -d -o immutd -g immutd -m 0700 /var/lib/immutd \
 && install -d -m 0755 /etc/immutd \
 && ln -s /opt/immutd/dist/src/cli.js /usr/local/bin/immutd
COPY --from=build /build/package.json /opt/immutd/package.json
COPY --from=build /build/node_modules /opt/immutd/node_modules
COPY --from=build /build/dist/src /opt/immutd/dist/src
# Shell completion and the man page, written by `npm run build` from the
# command definitions. The slim image has no man(1): `docker run --rm IMAGE
# man | man -l -` reads it on the host.
COPY --from=build /build/dist/completion/immutd.bash /usr/share/bash-completion/completions/immutd
COPY --from=build /build/dist/completion/_immutd /usr/share/zsh/vendor-completions/_immutd
COPY --from=build /build/dist/completion/immutd.fish /usr/share/fish/vendor_completions.d/immutd.fish
COPY --from=build /build/dist/man/immutd.1 /usr/share/man/man1/immutd.1
COPY config.example.yaml README.md /opt/immutd/

# Config: /etc/immutd/config.yaml (mount it read-only). Secrets: files (…File
# keys, e.g. /run/secrets/NAME) or ${ENV} references. The catalog lives on the
# /var/lib/immutd volume; mount the data to back up read-only.
# NODE_OPTIONS caps V8's young generation (2 x 8 MiB instead of growing to
# 2 x 64 MiB during a backup: about 100 MiB less RSS, no slower); `restore` and
# `verify --deep` start a child with 1 MiB semi-spaces instead.
ENV NODE_ENV=production \
    NODE_OPTIONS=--max-semi-space-size=8 \
    IMMUTD_CONFIG=/etc/immutd/config.yaml \
    IMMUTD_HEALTHCHECK_URL=http://127.0.0.1:9180/healthz
VOLUME ["/var/lib/immutd"]
USER 10001:10001
# The health check needs `http: { listen: "127.0.0.1:9180" }` in the config
# (or another address, with IMMUTD_HEALTHCHECK_URL set to match).
EXPOSE 9180
HEALTHCHECK --interval=60s --timeout=10s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch(process.env.IMMUTD_HEALTHCHECK_URL).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["/usr/bin/tini", "--", "immutd"]
CMD ["run"]
