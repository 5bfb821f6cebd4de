"""``python -m ultramae_monai.deploy -i INPUT_DIR -o OUTPUT_DIR -m BUNDLE_DIR`` (also the MAP's entry point)."""

import sys

from ultramae_monai.cli.deploy import main

sys.exit(main())
