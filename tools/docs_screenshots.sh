#!/usr/bin/env bash
# Screenshots of the built site (make docs first) in headless Chromium, for the
# record of what the pages look like: docs/screenshots/*.png.
#   tools/docs_screenshots.sh [SITE=docs/_build/html] [OUT=docs/screenshots]
# Needs Chromium (Debian: apt-get install chromium). The flags keep it off the
# network (this machine has none) and out of the user's profile.
set -euo pipefail
site=$(realpath "${1:-docs/_build/html}")
out=${2:-docs/screenshots}
mkdir -p "$out"
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
shot() {  # shot NAME PAGE#ANCHOR HEIGHT
    chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$profile" --hide-scrollbars --window-size="1280,$3" \
        --screenshot="$out/$1.png" "file://$site/$2" 2>/dev/null
}
shot api-deform_conv2d "api/numpy.html#cudcn.deform_conv2d" 2400
shot guide-transformers "guides/transformers.html" 2400
ls -l "$out"
