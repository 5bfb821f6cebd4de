"""Entry point of the MONAI Application Package: ``python3 /opt/holoscan/app`` runs the deploy app.

The package's code comes in through ``monai-deploy package ... --add ultramae_monai`` (docs/deploy.md); the
paths come from the MAP's environment (``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH``, ``HOLOSCAN_MODEL_PATH``).
"""

import sys

from ultramae_monai.cli.deploy import main

sys.exit(main())
