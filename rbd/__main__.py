import sys

from rbd.cli import main

sys.exit(main())
