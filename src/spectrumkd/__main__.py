import sys

from spectrumkd.cli import main

sys.exit(main())
