"""``python main.py [FOLDER]`` opens the ctscreen viewer (research use, not for diagnosis)."""

import sys

from ctscreen.cli import main

if __name__ == "__main__":
    sys.exit(main(["view", *sys.argv[1:]]))
