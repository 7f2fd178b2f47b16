#!/bin/sh
# Vendor the dashboard's browser libraries from the npm registry into webapp/static/vendor/.
#
# The files it writes are committed: the dashboard works with no internet and CI needs no npm.
# Run it again only to upgrade; VERSIONS.txt records the exact versions and checksums.
#
#   scripts/vendor-js.sh                      # socket.io-client@4, uplot@1
#   SOCKET_IO_CLIENT=socket.io-client@4.8.1 UPLOT=uplot@1.6.32 scripts/vendor-js.sh
set -eu

SOCKET_IO_CLIENT="${SOCKET_IO_CLIENT:-socket.io-client@4}"
UPLOT="${UPLOT:-uplot@1}"

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/webapp/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT INT TERM

command -v npm >/dev/null 2>&1 || { echo "vendor-js.sh: npm is needed (apt-get install npm)" >&2; exit 1; }

# unpack SPEC DIR: npm pack SPEC into $work and unpack it into $work/DIR; prints the version.
unpack() {
    spec="$1"
    dir="$2"
    mkdir -p "$work/$dir"
    if ! (cd "$work" && npm pack --loglevel=error "$spec" >"$work/$dir.out" 2>"$work/$dir.err"); then
        echo "vendor-js.sh: npm pack $spec failed:" >&2
        cat "$work/$dir.err" >&2
        exit 1
    fi
    tarball="$(tail -n 1 "$work/$dir.out")"
    tar -xzf "$work/$tarball" -C "$work/$dir" --strip-components=1
    node -e 'process.stdout.write(require(process.argv[1]).version)' "$work/$dir/package.json"
}

sio_version="$(unpack "$SOCKET_IO_CLIENT" sio)"
uplot_version="$(unpack "$UPLOT" uplot)"

mkdir -p "$dest"
rm -f "$dest"/*
cp "$work/sio/dist/socket.io.min.js" "$dest/socket.io.min.js"
cp "$work/sio/LICENSE" "$dest/socket.io-client.LICENSE"
cp "$work/uplot/dist/uPlot.iife.min.js" "$dest/uPlot.iife.min.js"
cp "$work/uplot/dist/uPlot.min.css" "$dest/uPlot.min.css"
cp "$work/uplot/LICENSE" "$dest/uplot.LICENSE"

# The minified bundles end with a sourceMappingURL comment; the maps are not vendored, so drop it
# to keep the browser's console quiet.
for f in "$dest/socket.io.min.js" "$dest/uPlot.iife.min.js"; do
    sed -i -e 's|//# sourceMappingURL=.*$||' "$f"
done

{
    echo "# Vendored by scripts/vendor-js.sh from the npm registry; do not edit by hand."
    echo "socket.io-client $sio_version  (dist/socket.io.min.js, LICENSE; MIT)"
    echo "uplot $uplot_version  (dist/uPlot.iife.min.js, dist/uPlot.min.css, LICENSE; MIT)"
    echo
    echo "# sha256"
    (cd "$dest" && sha256sum socket.io.min.js uPlot.iife.min.js uPlot.min.css \
        socket.io-client.LICENSE uplot.LICENSE)
} > "$dest/VERSIONS.txt"

echo "vendored socket.io-client $sio_version and uplot $uplot_version into $dest"
