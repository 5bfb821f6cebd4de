"""ultramae_monai.transforms."""
