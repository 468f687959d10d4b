#!/usr/bin/env bash
# Builds shoal-bench:nginx without a registry, for `cargo bench --bench mesh`:
# Debian's nginx binary and the shared libraries it links (taken from this
# host) in an otherwise empty root filesystem handed to `docker import`, with
# a configuration that answers every request with a fixed 26-byte page and
# keeps connections open (the keep-alive backend of the mesh benchmark).
# Skips the build when the image exists (SHOAL_BENCH_IMAGE_REBUILD=1 forces
# it). Prints the image id at the end.
set -euo pipefail

IMAGE="${SHOAL_BENCH_NGINX_IMAGE:-shoal-bench:nginx}"
if [ "${SHOAL_BENCH_IMAGE_REBUILD:-0}" != "1" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  docker image inspect --format '{{.Id}}' "$IMAGE"
  exit 0
fi

# shellcheck source=scripts/deb.sh
. "$(dirname "$0")/deb.sh"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$(fetch_deb nginx "$work/deb")" "$work/pkg"
nginx="$work/pkg/usr/sbin/nginx"
[ -x "$nginx" ] || { echo "the nginx package did not contain usr/sbin/nginx" >&2; exit 1; }

root="$work/root"
mkdir -p "$root/usr/sbin" "$root/etc/nginx" "$root/tmp" "$root/var/log/nginx" "$root/var/lib/nginx"
chmod 1777 "$root/tmp"
cp "$nginx" "$root/usr/sbin/nginx"
# The libraries nginx links, and the dynamic loader, at the paths ldd names.
missing="$(ldd "$nginx" | awk '/not found/ {print $1}')"
[ -z "$missing" ] || { echo "this host lacks libraries nginx needs: $missing" >&2; exit 1; }
for lib in $(ldd "$nginx" | awk '/=>/ {print $3} !/=>/ && $1 ~ /^\// {print $1}'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
cat >"$root/etc/nginx/nginx.conf" <<'CONF'
daemon off;
master_process off;
worker_processes 1;
user root;
error_log stderr warn;
pid /tmp/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  default_type text/plain;
  server {
    listen 80 backlog=4096;
    location / { return 200 "hello from the mesh bench\n"; }
  }
}
CONF

tar -C "$root" -c . | docker import \
  --change 'CMD ["/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf"]' \
  --message "shoal mesh bench backend (nginx)" \
  - "$IMAGE" >/dev/null
docker image inspect --format '{{.Id}}' "$IMAGE"
