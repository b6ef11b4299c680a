"""Entry point: `python -m training <stage>`; see `python -m training --help`."""
import sys

from training.cli import main

sys.exit(main())
