#!/usr/bin/env bash
# Stand-ins for the official base images the Dockerfile and docker-compose.yml name, for machines
# that cannot pull from Docker Hub (the CI machine reaches only Debian's and npm's registries).
# Each is Debian bookworm (debootstrap) plus what the official image holds that the topology relies
# on, at the official paths, imported under the official tag. Cached: a tag that already exists is
# left alone (STANDIN_REBUILD=1 rebuilds); a tag that can be pulled is pulled, not built.
#
#   deploy/standin/build-bases.sh     (root, a running Docker engine, debootstrap)
set -euo pipefail

NODE_TAG=node:20-bookworm-slim
REDIS_TAG=redis:7-bookworm
NGINX_TAG=nginx:1-bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
here=$(cd "$(dirname "$0")" && pwd)

# The files that use these tags must name the same ones, or the stand-ins stand in for nothing.
for tag in "$NODE_TAG" "$REDIS_TAG" "$NGINX_TAG"; do
  grep -qF "$tag" "$here/../../Dockerfile" "$here/../../docker-compose.yml" ||
    { echo "build-bases: $tag is named by neither the Dockerfile nor docker-compose.yml" >&2; exit 1; }
done

# One build at a time (.ci/run starts one early, in the background; the test then waits here).
exec 9<"$0"
flock 9

# The official image when it can be pulled; a stand-in only for what cannot.
missing=()
for tag in "$NODE_TAG" "$REDIS_TAG" "$NGINX_TAG"; do
  if [ "${STANDIN_REBUILD:-0}" = 1 ]; then missing+=("$tag"); continue; fi
  docker image inspect "$tag" >/dev/null 2>&1 && continue
  if timeout 120 docker pull -q "$tag" >/dev/null 2>&1; then echo "build-bases: pulled $tag"; continue; fi
  missing+=("$tag")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "build-bases: $NODE_TAG, $REDIS_TAG and $NGINX_TAG already present"
  exit 0
fi
for tool in debootstrap chroot docker; do
  command -v "$tool" >/dev/null || { echo "build-bases: $tool not found (apt-get install -y debootstrap docker.io)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "build-bases: debootstrap and chroot need root" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/fanout-standin.XXXXXX")
cleanup () {
  for dir in "$work"/*/; do
    mountpoint -q "$dir/proc" 2>/dev/null && umount -l "$dir/proc"
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

echo "build-bases: building ${missing[*]} from Debian bookworm ($MIRROR)"
debootstrap --variant=minbase bookworm "$work/base" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
  { tail -20 "$work/debootstrap.log" >&2; exit 1; }

# A copy of the base to add to; maintainer scripts of the packages installed start no service.
rootfs () {
  local dir=$work/$1
  cp -a "$work/base" "$dir"
  cp /etc/resolv.conf "$dir/etc/resolv.conf"
  mount -t proc proc "$dir/proc"
  printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
  chmod +x "$dir/usr/sbin/policy-rc.d"
}

packages () {
  local dir=$work/$1; shift
  chroot "$dir" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive chroot "$dir" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

finish () {
  local dir=$work/$1
  chroot "$dir" apt-get clean
  rm -rf "$dir"/var/lib/apt/lists/* "$dir/usr/sbin/policy-rc.d"
  : >"$dir/etc/resolv.conf"
  umount -l "$dir/proc"
}

entrypoint () {
  install -m 0755 /dev/stdin "$1"
}

node_image () {
  local node version major
  node=$(readlink -f "$(command -v node)")
  version=$("$node" --version)
  major=${version#v}; major=${major%%.*}
  [ "node:$major-bookworm-slim" = "$NODE_TAG" ] ||
    { echo "build-bases: the host's node is $version; $NODE_TAG needs Node 20" >&2; exit 1; }
  rootfs node
  local dir=$work/node npm
  # The official image: node, npm and npx in /usr/local, user and group node with uid/gid 1000.
  chroot "$dir" groupadd --gid 1000 node
  chroot "$dir" useradd --uid 1000 --gid node --shell /bin/bash --create-home node
  install -m 0755 "$node" "$dir/usr/local/bin/node"
  npm=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
  mkdir -p "$dir/usr/local/lib/node_modules"
  cp -a "$npm" "$dir/usr/local/lib/node_modules/npm"
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$dir/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$dir/usr/local/bin/npx"
  entrypoint "$dir/usr/local/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
set -e
# As the official image's: run the arguments with node unless they name a command.
if [ "${1#-}" != "${1}" ] || [ -z "$(command -v "${1}")" ] || { [ -f "${1}" ] && ! [ -x "${1}" ]; }; then
  set -- node "$@"
fi
exec "$@"
EOF
  local changes=(--change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    --change "ENV NODE_VERSION=${version#v}"
    --change 'ENTRYPOINT ["docker-entrypoint.sh"]' --change 'CMD ["node"]')
  # npm inside a build must trust what npm on this host trusts (a TLS-intercepting proxy's CA).
  if [ -n "${NODE_EXTRA_CA_CERTS:-}" ] && [ -r "$NODE_EXTRA_CA_CERTS" ]; then
    install -m 0644 "$NODE_EXTRA_CA_CERTS" "$dir/usr/local/share/host-ca.crt"
    changes+=(--change "ENV NODE_EXTRA_CA_CERTS=/usr/local/share/host-ca.crt")
  fi
  finish node
  tar -C "$dir" -c . | docker import "${changes[@]}" - "$NODE_TAG" >/dev/null
}

redis_image () {
  local dir=$work/redis
  rootfs redis
  # The official image's user (uid/gid 999) exists first, so the Debian package adopts it.
  chroot "$dir" groupadd --system --gid 999 redis
  chroot "$dir" useradd --system --gid redis --uid 999 --home-dir /var/lib/redis --shell /usr/sbin/nologin redis
  packages redis redis-server redis-tools
  ln -s /usr/bin/redis-server "$dir/usr/local/bin/redis-server"
  ln -s /usr/bin/redis-cli "$dir/usr/local/bin/redis-cli"
  mkdir -p "$dir/data" && chroot "$dir" chown redis:redis /data
  entrypoint "$dir/usr/local/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
set -e
# As the official image's: bare options go to redis-server; as root, own /data and drop to redis.
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
  set -- redis-server "$@"
fi
if [ "$1" = redis-server ]; then
  # The official build patches protected mode off by default (other containers must connect).
  case " $* " in *protected-mode*) ;; *) set -- "$@" --protected-mode no ;; esac
  if [ "$(id -u)" = 0 ]; then
    find . \! -user redis -exec chown redis '{}' +
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
  fi
fi
umask 0077
exec "$@"
EOF
  finish redis
  tar -C "$dir" -c . | docker import \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change 'VOLUME /data' --change 'WORKDIR /data' --change 'EXPOSE 6379' \
    --change 'ENTRYPOINT ["docker-entrypoint.sh"]' --change 'CMD ["redis-server"]' \
    - "$REDIS_TAG" >/dev/null
}

nginx_image () {
  local dir=$work/nginx
  rootfs nginx
  # The official image: user nginx (uid/gid 101), /usr/sbin/nginx, /etc/nginx, /var/cache/nginx,
  # logs to the container's stdout/stderr, curl for healthchecks, SIGQUIT to stop gracefully.
  chroot "$dir" groupadd --system --gid 101 nginx
  chroot "$dir" useradd --system --gid nginx --no-create-home --home-dir /nonexistent --shell /bin/false --uid 101 nginx
  packages nginx nginx curl ca-certificates
  mkdir -p "$dir/var/cache/nginx" "$dir/docker-entrypoint.d"
  ln -sf /dev/stdout "$dir/var/log/nginx/access.log"
  ln -sf /dev/stderr "$dir/var/log/nginx/error.log"
  entrypoint "$dir/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
set -e
# The official image runs /docker-entrypoint.d/*.sh (templates for its default site) before nginx;
# the stand-in has none of those scripts, and the topology mounts its own nginx.conf.
exec "$@"
EOF
  finish nginx
  tar -C "$dir" -c . | docker import \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change 'EXPOSE 80' \
    --change 'ENTRYPOINT ["/docker-entrypoint.sh"]' --change 'CMD ["nginx", "-g", "daemon off;"]' \
    - "$NGINX_TAG-import" >/dev/null
  # `docker import --change` takes no STOPSIGNAL: one more layer-less build step sets it.
  printf 'FROM %s\nSTOPSIGNAL SIGQUIT\n' "$NGINX_TAG-import" | DOCKER_BUILDKIT=0 docker build -q -t "$NGINX_TAG" - >/dev/null
  docker rmi "$NGINX_TAG-import" >/dev/null
}

for tag in "${missing[@]}"; do
  case $tag in
    "$NODE_TAG") node_image ;;
    "$REDIS_TAG") redis_image ;;
    "$NGINX_TAG") nginx_image ;;
  esac
  echo "build-bases: $tag imported"
done
