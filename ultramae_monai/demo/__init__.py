"""ultramae_monai.demo: the end-to-end demo (``ultramae demo``) on real ultrasound installed with the project."""

from ultramae_monai.demo.pipeline import DemoSettings, run_demo
from ultramae_monai.demo.recon_measure import ReconstructionScore, reconstruction_score

__all__ = ["DemoSettings", "ReconstructionScore", "reconstruction_score", "run_demo"]
