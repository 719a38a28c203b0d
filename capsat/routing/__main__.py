"""``python -m capsat.routing ...`` = ``capsat route ...`` (handy under ``accelerate launch -m``)."""
import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["route", *sys.argv[1:]]))
