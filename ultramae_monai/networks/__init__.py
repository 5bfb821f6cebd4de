"""ultramae_monai.networks."""
