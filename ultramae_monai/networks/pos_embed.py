"""Fixed separable sin-cos position embeddings for tubelet tokens (time/depth x rows x cols).

The spatial part is the 2D sin-cos table of MAE (He et al., "Masked Autoencoders Are Scalable Vision
Learners", CVPR 2022), channel layout ``[sin w, cos w, sin h, cos h]``, which is also what MONAI's
``build_sincos_position_embedding`` builds. The third axis (frames of a clip, slabs of a volume) adds a 1D
sin-cos code *anchored at slot 0*: ``[sin(τω), cos(τω) - 1]``, which is zero for the first slot. So an image
(one temporal slot) gets exactly the 2D table, and 2D checkpoints (MAE, USF-MAE, MONAI) see images the way
they were trained, while clips and volumes still get a distinct code per slot. Everything is computed from the
token grid at call time, so one model takes any input size without interpolation.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SpatioTemporalPosEmbed", "sincos_1d", "sincos_2d"]


def _omega(num: int, temperature: float, device: torch.device) -> torch.Tensor:
    return 1.0 / temperature ** (torch.arange(num, dtype=torch.float32, device=device) / num)


def sincos_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """``(N,) -> (N, dim)`` as ``[sin(pos ω), cos(pos ω)]`` with ``dim / 2`` geometric frequencies."""
    if dim % 2:
        raise ValueError(f"1D sin-cos embedding needs an even dim, got {dim}")
    out = positions.float()[:, None] * _omega(dim // 2, temperature, positions.device)[None]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(grid_hw: tuple[int, int], dim: int, temperature: float = 10000.0, device=None) -> torch.Tensor:
    """``(H*W, dim)`` table in row-major token order, channels ``[sin w, cos w, sin h, cos h]`` (MAE / MONAI)."""
    if dim % 4:
        raise ValueError(f"2D sin-cos embedding needs dim divisible by 4, got {dim}")
    h, w = grid_hw
    gh, gw = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=device),
        torch.arange(w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    return torch.cat(
        [sincos_1d(gw.flatten(), dim // 2, temperature), sincos_1d(gh.flatten(), dim // 2, temperature)], dim=1
    )


class SpatioTemporalPosEmbed(nn.Module):
    """Position code for a ``(T', H', W')`` token grid, token order ``t``-major then rows then columns.

    ``spatial_table`` optionally replaces the fixed 2D table with a loaded one (a checkpoint trained with a
    learned position embedding); it is resized bicubically to other grids, as MAE does for fine-tuning.
    """

    spatial_table: torch.Tensor | None

    def __init__(self, dim: int, temperature: float = 10000.0) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"embedding dim must be divisible by 4 for sin-cos position codes, got {dim}")
        self.dim = dim
        self.temperature = temperature
        self.register_buffer("spatial_table", None)

    def set_spatial_table(self, table: torch.Tensor, grid_hw: tuple[int, int]) -> None:
        """Use a loaded ``(H*W, dim)`` spatial table instead of the fixed sin-cos one."""
        if table.shape != (grid_hw[0] * grid_hw[1], self.dim):
            raise ValueError(f"table shape {tuple(table.shape)} does not match grid {grid_hw} x {self.dim}")
        self.spatial_table = table.detach().float().reshape(grid_hw[0], grid_hw[1], self.dim).clone()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[override]
        # a checkpoint saved after set_spatial_table carries the table: allocate the buffer so it loads
        key = prefix + "spatial_table"
        if key in state_dict and self.spatial_table is None:
            self.spatial_table = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _spatial(self, grid_hw: tuple[int, int], device: torch.device) -> torch.Tensor:
        if self.spatial_table is None:
            return sincos_2d(grid_hw, self.dim, self.temperature, device)
        table = self.spatial_table.to(device)
        if tuple(table.shape[:2]) != tuple(grid_hw):
            table = nn.functional.interpolate(
                table.permute(2, 0, 1)[None], size=grid_hw, mode="bicubic", align_corners=False
            )[0].permute(1, 2, 0)
        return table.reshape(-1, self.dim)

    def forward(self, grid: tuple[int, int, int], device: torch.device | None = None) -> torch.Tensor:
        """``(1, T'*H'*W', dim)`` float32 table for the grid ``(T', H', W')``."""
        t, h, w = grid
        device = device if device is not None else torch.device("cpu")
        spatial = self._spatial((h, w), device)  # (H'W', D)
        temporal = sincos_1d(torch.arange(t, device=device), self.dim, self.temperature)
        temporal[:, self.dim // 2 :] -= 1.0  # anchor slot 0 at zero: images get the plain 2D table
        return (temporal[:, None, :] + spatial[None, :, :]).reshape(1, t * h * w, self.dim)
