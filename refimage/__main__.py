import sys

from refimage.cli import main

sys.exit(main())
