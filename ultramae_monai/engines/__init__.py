"""ultramae_monai.engines."""
