# Sourced by the image scripts (test-image.sh, bench-image.sh).

# fetch_deb PACKAGE DIR: downloads Debian's PACKAGE into DIR without
# installing it, and prints the path of the .deb.
fetch_deb() {
  local package=$1 dir=$2
  mkdir -p "$dir"
  # apt-get download fetches as the _apt user when that user can reach and
  # write the directory; otherwise it warns and fetches as root.
  chmod 755 "$(dirname "$dir")" "$dir"
  if id _apt >/dev/null 2>&1; then chown _apt "$dir"; fi
  # It needs the package lists; fetch them only when the package is not
  # known yet (fresh machine).
  if ! apt-cache show "$package" >/dev/null 2>&1; then
    apt-get update -qq >&2
  fi
  (cd "$dir" && apt-get download -qq "$package") >&2
  ls "$dir/${package}"_*.deb
}
