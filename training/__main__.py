"""Entry point: `python -m training <stage>`; see `python -m training --help`."""
import sys
import warnings

from training.cli import main

# fastai's own layers call torch.jit.script at import, and the pinned torch warns about it on every run:
# nothing a user of this tool can act on.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

code = main()
if "training.train.distributed" in sys.modules:  # imported by the train stage only: `data` never loads torch
    from training.train.distributed import exit_process

    exit_process(code)  # returns unless this process trained with others over torch.distributed
sys.exit(code)
