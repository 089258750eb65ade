"""Headless Chromium settings shared by the browser tests and the frame benchmark.

Debian's chromium (never a browser downloaded by playwright), with the flags that keep it off the
network on a machine whose only reachable hosts are the package registries.
"""

import os

CHROMIUM = os.environ.get("PB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
