"""Planar geometry for the renderer: homographies, warping a text mask and carrying character boxes along.

Coordinates are continuous pixel coordinates: pixel (column c, row r) covers [c, c + 1) x [r, r + 1).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def scaling(sx: float, sy: float) -> np.ndarray:
    return np.diag([sx, sy, 1.0])


def rotation(degrees: float) -> np.ndarray:
    """Rotation about the origin; positive angles turn clockwise on screen (the y axis points down)."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def homography_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 projective map taking four points ``src`` (4, 2) to ``dst`` (4, 2)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows.append([x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y])
        rows.append([0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y])
        rhs += [u, v]
    h = np.linalg.solve(np.array(rows), np.array(rhs))
    return np.append(h, 1.0).reshape(3, 3)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Applies a 3x3 projective map to points (..., 2)."""
    homogeneous = points @ matrix[:, :2].T + matrix[:, 2]
    return homogeneous[..., :2] / homogeneous[..., 2:]


def warp_mask(mask: np.ndarray, matrix: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resamples a (h, w) uint8 mask through ``matrix`` (source -> output coordinates) into (height, width)."""
    # PIL wants the output -> source map and samples at pixel centres; conjugating by half-pixel shifts makes
    # the map act on continuous coordinates as documented above.
    inverse = translation(0.5, 0.5) @ np.linalg.inv(matrix) @ translation(-0.5, -0.5)
    inverse = inverse / inverse[2, 2]
    warped = Image.fromarray(mask).transform(
        (width, height), Image.Transform.PERSPECTIVE, tuple(inverse.flat[:8]), Image.Resampling.BILINEAR
    )
    return np.asarray(warped)


def warp_boxes(boxes: np.ndarray, matrix: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes (n, 4) as [x0, y0, x1, y1] -> bounding boxes of their warped corners, clipped to the image."""
    corners = boxes[:, [[0, 1], [2, 1], [2, 3], [0, 3]]]
    warped = transform_points(matrix, corners)
    out = np.concatenate([warped.min(axis=1), warped.max(axis=1)], axis=1)
    return np.clip(out, 0.0, [width, height, width, height])


def bend_columns(mask: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Shifts each column of a (h, w) mask down by ``offsets`` (w,) pixels (fractional, linearly interpolated).

    Rows shifted in from outside the mask are empty; the caller leaves enough blank rows for the largest shift.
    """
    height = mask.shape[0]
    whole = np.floor(offsets).astype(np.int64)
    fraction = (offsets - whole).astype(np.float32)
    padded = np.concatenate([np.zeros((1, mask.shape[1]), mask.dtype), mask, np.zeros((1, mask.shape[1]), mask.dtype)])
    rows = np.arange(height)[:, None] - whole[None, :]
    columns = np.arange(mask.shape[1])[None, :]
    upper = padded[np.clip(rows, -1, height) + 1, columns].astype(np.float32)
    lower = padded[np.clip(rows - 1, -1, height) + 1, columns].astype(np.float32)
    return (upper * (1.0 - fraction) + lower * fraction).round().astype(np.uint8)
