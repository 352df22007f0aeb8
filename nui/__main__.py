import sys

from nui.cli import main

sys.exit(main())
