"""MONAI Deploy application for UltraMAE bundles: DICOM ultrasound in; DICOM SEG, classification JSON, PNG out.

Needs the ``deploy`` extra (MONAI Deploy App SDK, Holoscan, highdicom): ``pip install -e .[deploy]`` or
``scripts/venv_deploy.sh``. Run it with ``python -m ultramae_monai.deploy -i IN -o OUT -m BUNDLE_DIR`` or
``ultramae deploy``; ``docs/deploy.md`` shows how to package it as a MONAI Application Package. Nothing is
imported here, so the rest of the package never pulls in Holoscan.
"""
