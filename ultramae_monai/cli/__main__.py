import sys

from ultramae_monai.cli import main

sys.exit(main())
