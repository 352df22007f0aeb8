"""`torchrun --nproc_per_node=N -m training.diagnosis --recipe RECIPE [key=value ...]`"""

import sys

from training.diagnosis.train import main

sys.exit(main())
