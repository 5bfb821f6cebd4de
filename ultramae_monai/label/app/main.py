"""The MONAI Label app entry point: ``monailabel start_server --app <this folder> --studies DIR --conf ...``.

MONAI Label loads ``main.py`` from the app folder and instantiates the ``MONAILabelApp`` subclass found in it.
"""

from ultramae_monai.label.ultramae_app import UltraMAELabelApp

__all__ = ["UltraMAELabelApp"]
