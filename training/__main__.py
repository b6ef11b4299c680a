"""Entry point: `python -m training <stage>`; see `python -m training --help`."""
import sys
import warnings

from training.cli import main

# fastai's own layers call torch.jit.script at import, and the pinned torch warns about it on every run:
# nothing a user of this tool can act on.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

sys.exit(main())
