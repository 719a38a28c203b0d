"""Entry point: ``accelerate launch train --config ...`` (from the repository root) or
``python -m train --config ...``."""
import sys

from train.cli import main

sys.exit(main())
