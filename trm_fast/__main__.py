import sys

from trm_fast.cli import main

sys.exit(main())
