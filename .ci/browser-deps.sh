#!/usr/bin/env bash
# Installs what the browser tests (tests/browser/) need on Debian: the distribution's Chromium
# and the fonts it renders with. Playwright's own browser downloads are never used: the tests
# drive /usr/bin/chromium. Idempotent: when everything is present it returns at once.
set -euo pipefail

# Debian's package names; fonts-noto-color-emoji draws the ✅ marks the notebooks print.
PACKAGES=(chromium fonts-dejavu-core fonts-noto-color-emoji)

missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done

if [ ${#missing[@]} -eq 0 ] && [ -x /usr/bin/chromium ]; then
    exit 0
fi

if ! command -v apt-get >/dev/null; then
    echo "The browser tests need Chromium at /usr/bin/chromium; install it with your package manager." >&2
    exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "Installing for the browser tests: ${missing[*]:-chromium}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]:-chromium}" >/dev/null
/usr/bin/chromium --version
