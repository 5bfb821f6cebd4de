"""ultramae_monai.confmap."""
