import sys

from lepton_edge.cli import main

sys.exit(main())
