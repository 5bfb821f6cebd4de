"""ultramae_monai.losses."""
