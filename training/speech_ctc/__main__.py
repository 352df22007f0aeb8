"""`torchrun --nproc_per_node=N -m training.speech_ctc --recipe RECIPE [key=value ...]`"""

import sys

from training.speech_ctc.train import main

sys.exit(main())
