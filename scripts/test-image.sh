#!/usr/bin/env bash
# Builds the local test image shoal-test:latest without a registry: a root
# filesystem holding Debian's busybox-static (sh, sleep, httpd, nc, ...) is
# handed to `docker import`. Skips the build when the image already exists
# (SHOAL_TEST_IMAGE_REBUILD=1 forces it). Also builds shoal-test:healthcheck,
# the same image with a HEALTHCHECK of its own, from the local one (no
# registry). Prints the image id at the end.
set -euo pipefail

IMAGE="${SHOAL_TEST_IMAGE:-shoal-test:latest}"
HEALTH_IMAGE="${IMAGE%%:*}:healthcheck"

# An image whose own health check passes, for tests of the image's default.
health_image() {
  if [ "${SHOAL_TEST_IMAGE_REBUILD:-0}" = "1" ] || ! docker image inspect "$HEALTH_IMAGE" >/dev/null 2>&1; then
    printf 'FROM %s\nHEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD ["true"]\n' "$IMAGE" \
      | DOCKER_BUILDKIT=0 docker build -q -t "$HEALTH_IMAGE" - >/dev/null
  fi
}

if [ "${SHOAL_TEST_IMAGE_REBUILD:-0}" != "1" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  health_image
  docker image inspect --format '{{.Id}}' "$IMAGE"
  exit 0
fi

# shellcheck source=scripts/deb.sh
. "$(dirname "$0")/deb.sh"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
deb="$(fetch_deb busybox-static "$work/deb")"

root="$work/root"
mkdir -p "$root"
dpkg-deb -x "$deb" "$root"
busybox="$root/bin/busybox"
[ -x "$busybox" ] || { echo "busybox-static did not contain bin/busybox" >&2; exit 1; }

# The equivalent of `busybox --install -s`, done from outside the image: one
# symlink per applet. The binary is static, so it runs on the build host.
mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" "$root/tmp" \
  "$root/etc" "$root/www" "$root/proc" "$root/sys" "$root/dev"
chmod 1777 "$root/tmp"
for applet in $("$busybox" --list); do
  [ "$applet" = "busybox" ] && continue
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
# The applets the tests rely on must be there whatever --list printed.
for applet in sh sleep httpd nc true false echo cat ls kill wget; do
  [ -e "$root/bin/$applet" ] || { echo "busybox has no $applet applet" >&2; exit 1; }
done

printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
echo "shoal test image" >"$root/www/index.html"

tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin' \
  --change 'CMD ["/bin/sh"]' \
  --message "shoal test image (busybox-static)" \
  - "$IMAGE" >/dev/null

health_image
docker image inspect --format '{{.Id}}' "$IMAGE"
