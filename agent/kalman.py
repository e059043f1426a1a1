"""A constant-velocity Kalman filter on `xyah` boxes, vectorized over tracks.

The state of one track is 8 numbers, (x, y, a, h, vx, vy, va, vh): box centre, aspect ratio
w / h, height, and their velocities per frame. A measurement is the box (x, y, a, h). This is
the filter of SORT, DeepSORT and ByteTrack (Ultralytics' `KalmanFilterXYAH`), with the same
noise model: position and velocity noise proportional to the box height, so the filter behaves
the same for near and far objects.

The motion matrix F = [[I, I], [0, I]], the observation H = [I, 0] and every noise matrix
(initial, process, measurement) pair each coordinate only with its own velocity, so the 8x8
covariance never holds anything but four independent 2x2 blocks, one per coordinate. We store
just those: `covariance` has shape (n, 3, 4) with rows Var(position), Cov(position, velocity),
Var(velocity), and columns x, y, a, h. The arithmetic is the textbook filter's, entry for entry
(`full_covariance()` rebuilds the 8x8 matrices; the unit tests check both forms agree), at the
cost of a few elementwise operations per frame instead of batched 8x8 products and solves.

Every method takes a batch: `mean` (n, 8) and `covariance` (n, 3, 4); one call predicts or
updates all tracks at once.
"""
from __future__ import annotations

import numpy as np

POS, POS_VEL, VEL = 0, 1, 2
"""Rows of `covariance`: Var(position), Cov(position, velocity), Var(velocity)."""
_SCALES_WITH_HEIGHT = np.array([1.0, 1.0, 0.0, 1.0])
_ASPECT = np.array([0.0, 0.0, 1.0, 0.0])
"""Noise of x, y and h is proportional to the box height; the aspect ratio's is a constant."""


def xyxy_to_xyah(xyxy: np.ndarray) -> np.ndarray:
    """Corners (n, 4) (x1, y1, x2, y2) to (centre x, centre y, width / height, height), float64."""
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    wh = xyxy[:, 2:] - xyxy[:, :2]
    out = np.empty_like(xyxy)
    out[:, :2] = xyxy[:, :2] + wh / 2
    out[:, 2] = wh[:, 0] / wh[:, 1]
    out[:, 3] = wh[:, 1]
    return out


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    """(centre x, centre y, width / height, height) (n, 4) to corners (x1, y1, x2, y2), float32."""
    xyah = np.asarray(xyah, dtype=np.float64).reshape(-1, 4)
    half = xyah[:, 2:4] / 2
    half[:, 0] *= xyah[:, 3]
    return np.concatenate([xyah[:, :2] - half, xyah[:, :2] + half], axis=1).astype(np.float32)


# x' = x + v, one frame per step (the mean is a row vector, so it is multiplied by F^T).
_MOTION_T = (np.eye(8) + np.eye(8, k=4)).T
# Per coordinate the covariance is [[pos, pos_vel], [pos_vel, vel]] and F = [[1, 1], [0, 1]], so
# F P F^T = [[pos + 2 pos_vel + vel, pos_vel + vel], [pos_vel + vel, vel]]: a linear map of the
# three stored entries, the same for every coordinate and track.
_PROPAGATE = np.array([[1.0, 2.0, 1.0],
                       [0.0, 1.0, 1.0],
                       [0.0, 0.0, 1.0]])
# P - K S K^T, per coordinate with K = (pos, pos_vel) / S: subtract gain[_GAIN_OF] * covariance[_TIMES].
_GAIN_OF = [0, 0, 1]
_TIMES = [POS, POS_VEL, POS_VEL]


class KalmanFilterXYAH:
    """Constant-velocity motion, direct observation of (x, y, a, h).

    std_weight_position: position noise per pixel of box height (1/20 in the paper). Higher:
        the filter trusts detections more than its own motion (follows jitter, reacts faster).
    std_weight_velocity: velocity noise per pixel of box height (1/160). Higher: velocity adapts
        faster to turns and stops, but predictions through occlusions wander more.
    The aspect ratio gets the paper's constant noise (1e-2 position, 1e-5 velocity, 1e-1
    measurement): boxes change shape slowly.
    """

    def __init__(self, std_weight_position: float = 1.0 / 20, std_weight_velocity: float = 1.0 / 160) -> None:
        self.std_weight_position = std_weight_position
        self.std_weight_velocity = std_weight_velocity
        # standard deviations = h * weights + constants, in the (3, 4) covariance layout
        self._initial = _noise(2 * std_weight_position, 1e-2, 10 * std_weight_velocity, 1e-5)
        self._motion = _noise(std_weight_position, 1e-2, std_weight_velocity, 1e-5)
        self._measurement = _noise(std_weight_position, 1e-1, 0.0, 0.0)

    def initiate(self, xyah: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New tracks from measurements (n, 4): the box with zero velocity and a wide covariance."""
        xyah = np.asarray(xyah, dtype=np.float64).reshape(-1, 4)
        mean = np.zeros((len(xyah), 8))
        mean[:, :4] = xyah
        return mean, _variance(xyah[:, 3], self._initial)

    def predict(self, mean: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One frame ahead: position += velocity; P = F P F^T + Q."""
        return mean @ _MOTION_T, _PROPAGATE @ covariance + _variance(mean[:, 3], self._motion)

    def project(self, mean: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The state as a measurement: (x, y, a, h) (n, 4) and its variances (n, 4), H P H^T + R
        (the projected covariance is diagonal)."""
        return mean[:, :4], covariance[:, POS] + _variance(mean[:, 3], self._measurement)[:, POS]

    def update(self, mean: np.ndarray, covariance: np.ndarray,
               xyah: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Correct predicted states with their matched measurements (n, 4), row for row."""
        projected, variance = self.project(mean, covariance)
        # K = P H^T S^-1: per coordinate (pos / S, pos_vel / S), shape (n, 2, 4) like the state
        gain = covariance[:, :2] / variance[:, None, :]
        innovation = np.asarray(xyah, dtype=np.float64) - projected
        corrected = mean + (gain * innovation[:, None, :]).reshape(-1, 8)
        # P - K S K^T: pos -= K_pos pos, pos_vel -= K_pos pos_vel, vel -= K_vel pos_vel
        return corrected, covariance - gain[:, _GAIN_OF] * covariance[:, _TIMES]


def _noise(pos_weight: float, pos_aspect: float, vel_weight: float,
           vel_aspect: float) -> tuple[np.ndarray, np.ndarray]:
    """(weights, constants), each (3, 4): std = h * weights + constants. Position (POS row) and
    velocity (VEL row) noise of x, y, h scale with the box height h; the aspect ratio's is a
    constant; POS_VEL is zero (the noise is independent per entry)."""
    weights = np.array([pos_weight, 0.0, vel_weight])[:, None] * _SCALES_WITH_HEIGHT
    constants = np.array([pos_aspect, 0.0, vel_aspect])[:, None] * _ASPECT
    return weights, constants


def _variance(h: np.ndarray, noise: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(n, 3, 4) noise variances for box heights h (n,)."""
    weights, constants = noise
    return np.square(h[:, None, None] * weights + constants)


def full_covariance(covariance: np.ndarray) -> np.ndarray:
    """The (n, 8, 8) covariance matrices that the (n, 3, 4) blocks stand for."""
    n = len(covariance)
    full = np.zeros((n, 8, 8))
    i = np.arange(4)
    full[:, i, i] = covariance[:, POS]
    full[:, i, i + 4] = full[:, i + 4, i] = covariance[:, POS_VEL]
    full[:, i + 4, i + 4] = covariance[:, VEL]
    return full
