from __future__ import annotations

import numpy as np
import pytest

from edgefleet.agent.kalman import POS, POS_VEL, VEL, KalmanFilterXYAH, full_covariance, xyah_to_xyxy, xyxy_to_xyah

KF = KalmanFilterXYAH()


def track(x=100.0, y=50.0, a=0.5, h=100.0, vx=0.0, vy=0.0, va=0.0, vh=0.0):
    """One freshly initiated track (covariance from `initiate`), with the given velocity."""
    mean, covariance = KF.initiate(np.array([[x, y, a, h]]))
    mean[0, 4:] = vx, vy, va, vh
    return mean, covariance


def textbook_step(mean, covariance, measurement):
    """The dense 8x8 filter as written in the paper's code: predict, then update one track."""
    wp, wv = KF.std_weight_position, KF.std_weight_velocity
    F = np.eye(8) + np.eye(8, k=4)
    H = np.eye(4, 8)
    h = mean[3]
    Q = np.diag(np.square([wp * h, wp * h, 1e-2, wp * h, wv * h, wv * h, 1e-5, wv * h]))
    mean, covariance = F @ mean, F @ covariance @ F.T + Q
    h = mean[3]
    R = np.diag(np.square([wp * h, wp * h, 1e-1, wp * h]))
    S = H @ covariance @ H.T + R
    K = covariance @ H.T @ np.linalg.inv(S)
    return mean + K @ (measurement - H @ mean), covariance - K @ S @ K.T


def test_initiate_hand_computed():
    mean, covariance = track()
    assert mean[0].tolist() == [100, 50, 0.5, 100, 0, 0, 0, 0]
    # std: 2 * h / 20 = 10 for x, y, h; 1e-2 for a; velocities 10 * h / 160 = 6.25 and 1e-5
    np.testing.assert_allclose(covariance[0, POS], [100, 100, 1e-4, 100])
    np.testing.assert_allclose(covariance[0, POS_VEL], 0)
    np.testing.assert_allclose(covariance[0, VEL], [39.0625, 39.0625, 1e-10, 39.0625])


@pytest.mark.parametrize("velocity, moved", [
    ((0, 0, 0, 0), (100, 50, 0.5, 100)),
    ((2, -1, 0, 0.5), (102, 49, 0.5, 100.5)),
    ((-3.5, 4, 0.01, 0), (96.5, 54, 0.51, 100)),
])
def test_predict_moves_the_box_by_its_velocity(velocity, moved):
    mean, covariance = track(*(100, 50, 0.5, 100), *velocity)
    predicted, _ = KF.predict(mean, covariance)
    np.testing.assert_allclose(predicted[0, :4], moved)
    np.testing.assert_allclose(predicted[0, 4:], velocity)


def test_predict_covariance_hand_computed():
    _, covariance = KF.predict(*track())
    # x: P = 100 + 2 * 0 + 39.0625 + (h / 20)^2 = 25  ->  164.0625; cross term 0 + 39.0625;
    # velocity 39.0625 + (h / 160)^2 = 0.390625  ->  39.453125
    assert covariance[0, POS, 0] == pytest.approx(164.0625)
    assert covariance[0, POS_VEL, 0] == pytest.approx(39.0625)
    assert covariance[0, VEL, 0] == pytest.approx(39.453125)
    # aspect ratio: constant noise 1e-2 (position) and 1e-5 (velocity)
    assert covariance[0, POS, 2] == pytest.approx(1e-4 + 1e-10 + 1e-4)
    assert covariance[0, VEL, 2] == pytest.approx(2e-10)


def test_update_hand_computed():
    mean, covariance = KF.predict(*track())
    mean, covariance = KF.update(mean, covariance, np.array([[110.0, 50.0, 0.5, 100.0]]))
    s = 164.0625 + 25.0  # innovation variance of x: predicted P + measurement noise (h / 20)^2
    assert mean[0, 0] == pytest.approx(100 + 10 * 164.0625 / s)  # 108.678
    assert mean[0, 4] == pytest.approx(10 * 39.0625 / s)  # the velocity learns 2.066 px/frame
    assert mean[0, 1:4].tolist() == [50.0, 0.5, 100.0]  # unchanged where the measurement agreed
    assert covariance[0, POS, 0] == pytest.approx(164.0625 * 25 / s)
    assert covariance[0, POS_VEL, 0] == pytest.approx(39.0625 * 25 / s)
    assert covariance[0, VEL, 0] == pytest.approx(39.453125 - 39.0625 ** 2 / s)


def test_project_adds_measurement_noise():
    mean, covariance = track()
    projected, variance = KF.project(mean, covariance)
    assert projected[0].tolist() == [100, 50, 0.5, 100]
    np.testing.assert_allclose(variance[0], [100 + 25, 100 + 25, 1e-4 + 1e-2, 100 + 25])


def test_blocks_equal_the_textbook_8x8_filter():
    rng = np.random.default_rng(7)
    boxes = np.c_[rng.uniform(0, 500, (6, 2)), rng.uniform(0.3, 0.7, 6), rng.uniform(20, 200, 6)]
    mean, covariance = KF.initiate(boxes)
    dense = [(m, c) for m, c in zip(mean, full_covariance(covariance))]
    for step in range(8):
        measured = boxes + step * np.array([3.0, -1.0, 0.0, 0.4]) + rng.normal(0, 2, boxes.shape) * [1, 1, 0.01, 1]
        mean, covariance = KF.update(*KF.predict(mean, covariance), measured)
        dense = [textbook_step(m, c, z) for (m, c), z in zip(dense, measured)]
    np.testing.assert_allclose(mean, [m for m, _ in dense], rtol=1e-9)
    np.testing.assert_allclose(full_covariance(covariance), [c for _, c in dense], rtol=1e-9, atol=1e-12)


def test_a_batch_is_its_rows_one_by_one():
    rng = np.random.default_rng(3)
    boxes = np.c_[rng.uniform(0, 500, (4, 2)), rng.uniform(0.3, 0.7, 4), rng.uniform(20, 200, 4)]
    measured = boxes + rng.normal(0, 3, boxes.shape)
    mean, covariance = KF.update(*KF.predict(*KF.initiate(boxes)), measured)
    for i in range(4):
        one_mean, one_cov = KF.update(*KF.predict(*KF.initiate(boxes[i:i + 1])), measured[i:i + 1])
        np.testing.assert_allclose(mean[i], one_mean[0])
        np.testing.assert_allclose(covariance[i], one_cov[0])


@pytest.mark.parametrize("xyxy, xyah", [
    ((0, 0, 10, 20), (5, 10, 0.5, 20)),
    ((100, 50, 140, 150), (120, 100, 0.4, 100)),
    ((-10, -10, 10, 10), (0, 0, 1, 20)),
])
def test_box_formats_round_trip(xyxy, xyah):
    np.testing.assert_allclose(xyxy_to_xyah(np.array([xyxy], np.float32))[0], xyah)
    np.testing.assert_allclose(xyah_to_xyxy(np.array([xyah]))[0], xyxy)
