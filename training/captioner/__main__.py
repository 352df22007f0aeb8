"""`torchrun --nproc_per_node=N -m training.captioner --recipe RECIPE [key=value ...]`"""

import sys

from training.captioner.train import main

sys.exit(main())
