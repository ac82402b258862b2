"""The simulator's per-device playback profile (quip/simulate/devices.py): the orderings
it promises, checked on large seeded samples of its draws."""

from __future__ import annotations

import collections
import random
import statistics

import pytest

from quip.simulate.devices import (
    DEVICES,
    ERROR_CODES,
    Device,
    ErrorKind,
    draw_error_code,
    draw_frames,
    draw_refresh_hz,
    draw_startup_ms,
    draw_strain,
    error_weights,
)

BY_MODEL = {device.model: device for device in DEVICES}
SAMPLES = 20_000
KINDS: tuple[ErrorKind, ...] = ("start", "play", "warning")


def dropped_pct(device: Device, kbps: int, seed: int, hz: int | None = None) -> float:
    """Dropped frames in % over SAMPLES heartbeats of 10 s, each of a new play (its own
    strain and refresh mode unless `hz` is given)."""
    rng = random.Random(seed)
    rendered = dropped = 0
    for _ in range(SAMPLES):
        mode = hz or draw_refresh_hz(rng, device)
        beat = draw_frames(rng, device, mode, kbps, 10_000, draw_strain(rng))
        rendered += beat[0]
        dropped += beat[1]
    return 100 * dropped / (rendered + dropped)


@pytest.mark.parametrize("kbps", [1_500, 6_000, 12_000], ids=lambda kbps: f"{kbps} kbps")
def test_quest_2_drops_more_frames_than_quest_3_at_the_same_bitrate(kbps: int) -> None:
    quest2, quest3 = BY_MODEL["quest2"], BY_MODEL["quest3"]
    # Each at its own display modes (the Quest 3's 120 Hz has the shorter frame budget),
    # and both at 90 Hz.
    assert dropped_pct(quest2, kbps, seed=1) > 1.5 * dropped_pct(quest3, kbps, seed=2)
    assert dropped_pct(quest2, kbps, seed=3, hz=90) > 1.5 * dropped_pct(quest3, kbps, seed=4, hz=90)


def test_drops_grow_with_the_bitrate_and_stay_within_the_frames_shown() -> None:
    for device in DEVICES:
        assert dropped_pct(device, 800, seed=5) < dropped_pct(device, device.max_kbps, seed=5)
    rng = random.Random(6)
    for device in DEVICES:
        for _ in range(2_000):
            hz = draw_refresh_hz(rng, device)
            strain = draw_strain(rng) * 20  # far past anything drawn: the cap holds
            rendered, dropped = draw_frames(rng, device, hz, device.max_kbps, 10_000, strain)
            assert rendered + dropped == hz * 10
            assert 0 <= dropped <= rendered


@pytest.mark.parametrize(
    ("model", "modes"),
    [
        pytest.param("quest2", {72, 90}, id="Quest 2 72/90 Hz"),
        pytest.param("quest3", {90, 120}, id="Quest 3 90/120 Hz"),
        pytest.param("visionpro", {90}, id="Vision Pro 90 Hz"),
        pytest.param("pico4", {72, 90}, id="Pico 4 72/90 Hz"),
    ],
)
def test_plays_run_at_the_devices_refresh_rates(model: str, modes: set[int]) -> None:
    rng = random.Random(7)
    drawn = collections.Counter(draw_refresh_hz(rng, BY_MODEL[model]) for _ in range(SAMPLES))
    assert set(drawn) == modes


@pytest.mark.parametrize("network_factor", [1.0, 2.6], ids=["good network", "poor network"])
def test_vision_pro_starts_faster_than_every_other_device(network_factor: float) -> None:
    medians = {}
    for index, device in enumerate(DEVICES):
        rng = random.Random(f"startup/{index}")
        medians[device.model] = statistics.median(
            draw_startup_ms(rng, device, network_factor) for _ in range(SAMPLES)
        )
    fastest = medians.pop("visionpro")
    assert fastest < 0.9 * min(medians.values()), (fastest, medians)


@pytest.mark.parametrize("device", DEVICES, ids=lambda device: device.model)
def test_error_codes_are_drawn_from_their_kind_with_the_devices_weights(device: Device) -> None:
    rng = random.Random(f"codes/{device.model}")
    for kind in KINDS:
        weights = error_weights(device, kind)
        assert set(weights) == {e.code for e in ERROR_CODES if e.kind == kind}
        drawn = collections.Counter(draw_error_code(rng, device, kind) for _ in range(SAMPLES))
        assert set(drawn) <= set(weights)
        total = sum(weights.values())
        for code, weight in weights.items():
            # Binomial standard error at 20,000 draws is at most 0.0036: 0.015 is 4 of them.
            assert abs(drawn[code] / SAMPLES - weight / total) < 0.015, (kind, code)


def share(model: str, kind: ErrorKind, code: str) -> float:
    weights = error_weights(BY_MODEL[model], kind)
    return weights[code] / sum(weights.values())


def test_device_error_factors_shift_the_mix_where_the_hardware_differs() -> None:
    assert share("quest2", "play", "DECODER_CRASH") > share("quest3", "play", "DECODER_CRASH")
    assert share("quest2", "play", "OUT_OF_MEMORY") > share("quest3", "play", "OUT_OF_MEMORY")
    unsupported = "MEDIA_ERR_SRC_NOT_SUPPORTED"
    assert share("visionpro", "start", unsupported) > share("quest3", "start", unsupported)
    assert share("pico4", "start", "DRM_LICENSE_FAILED") > share(
        "quest3", "start", "DRM_LICENSE_FAILED"
    )


def test_the_table_names_only_known_codes_and_each_device_once() -> None:
    known = {e.code for e in ERROR_CODES}
    assert len(known) == len(ERROR_CODES)
    assert len(BY_MODEL) == len(DEVICES)
    for device in DEVICES:
        assert {code for code, _ in device.error_factors} <= known, device.model
        assert all(weight > 0 for _, weight in device.refresh_hz)
