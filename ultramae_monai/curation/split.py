"""Patient-grouped train/validation split, decided by the salted patient token alone.

All samples of a patient land in the same split (frames of one cine, both HC18 images of one exam),
so validation never sees a patient it trained on. The decision is a pure function of the token:
no state to store, stable when files are added or a run is resumed, and reproducible given the salt.
"""

from __future__ import annotations

__all__ = ["SPLIT_TRAIN", "SPLIT_VAL", "assign_split"]

SPLIT_TRAIN = "train"
SPLIT_VAL = "val"


def assign_split(patient_token: str, val_fraction: float) -> str:
    """``"val"`` for a ``val_fraction`` share of patients (uniform over the HMAC tokens), else ``"train"``."""
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    u = int(patient_token[:8], 16) / 16**8
    return SPLIT_VAL if u < val_fraction else SPLIT_TRAIN
