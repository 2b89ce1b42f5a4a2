import sys

from twelvefactor_services.hub.cli import main

sys.exit(main())
