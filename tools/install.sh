#!/usr/bin/env bash
# Installs ctscreen on a fresh Debian/Ubuntu machine into ./.venv:
# the system libraries Qt needs (offscreen, or on a desktop: the xcb platform plugin of
# Qt >= 6.5 needs libxcb-cursor0 and the libxcb-* family), Xvfb (the real-X test), dicom3tools (the
# DICOM validator the tests use), Orthanc (the PACS the tests start), the CPU build of torch, then ctscreen with
# its test extras. Usage: tools/install.sh   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq || echo "install.sh: apt-get update failed; trying the install anyway" >&2
    $SUDO apt-get install -y -qq --no-install-recommends \
        libegl1 libgl1 libxkbcommon0 libxkbcommon-x11-0 libfontconfig1 libglib2.0-0 libdbus-1-3 \
        libx11-xcb1 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 \
        libxcb-randr0 libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libxcb-xfixes0 libxcb-shm0 \
        libxcb-sync1 libxcb-render0 libxrender1 libxi6 xvfb xauth \
        dicom3tools poppler-utils >/dev/null \
        || echo "install.sh: some system packages could not be installed (Qt may need libegl1/libxkbcommon0; dciodvfy tests will skip)" >&2
    # Orthanc + its DICOMweb plugin: the PACS the tests start on free localhost ports
    # (tests/orthanc_server.py). A system service the package starts is not needed: when this
    # script installed it, it is stopped and disabled so ports 4242/8042 stay free.
    had_orthanc=0
    if dpkg -s orthanc >/dev/null 2>&1; then had_orthanc=1; fi
    $SUDO apt-get install -y -qq --no-install-recommends orthanc orthanc-dicomweb >/dev/null \
        || echo "install.sh: orthanc/orthanc-dicomweb could not be installed (the PACS tests will skip)" >&2
    if [ "$had_orthanc" = 0 ] && dpkg -s orthanc >/dev/null 2>&1; then
        if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
            $SUDO systemctl disable --now orthanc >/dev/null 2>&1 || true
        fi
        if command -v service >/dev/null 2>&1; then $SUDO service orthanc stop >/dev/null 2>&1 || true; fi
    fi
fi

$PY -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch first: plain 'torch' from PyPI would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
python -c "import ctscreen, torch, PySide6, pyqtgraph, pydicom; print('ctscreen', ctscreen.__version__, 'installed with torch', torch.__version__)"
