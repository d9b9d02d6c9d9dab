"""bench.serve --stages: the stage timer wraps predict's forward and conversion, sums them per request,
and puts the originals back (no timing asserted: targets are met in benchmarks, not unit tests)."""

from __future__ import annotations

import time

import backend.serving.predict as predict_module
from bench.serve import StageTimer


def test_stage_timer_sums_each_stage_per_request_and_restores_predict() -> None:
    infer, convert = predict_module._infer, predict_module._one_prediction
    timer = StageTimer()
    timer.install()
    try:
        assert predict_module._infer is not infer and predict_module._one_prediction is not convert
        timer.start()
        timer._wrap(lambda: time.sleep(0.02), "infer")()
        for _ in range(3):
            timer._wrap(lambda: time.sleep(0.01), "convert")()
        timer.stop()
        timer.start()
        timer.stop()
    finally:
        timer.uninstall()
    assert predict_module._infer is infer and predict_module._one_prediction is convert
    first, second = timer.runs
    assert first["infer"] >= 0.02 and first["convert"] >= 0.03 and second == {"infer": 0.0, "convert": 0.0}
    assert set(timer.medians()) == {"infer", "convert"}
