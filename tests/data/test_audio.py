"""Audio decoding and spectrograms: PCM scaling, mono mixing, both readers, the paper / code recipes
checked against a plain-numpy STFT, frequency placement, resampling, corrupt files, .npy spectrograms."""

from __future__ import annotations

import pickle
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile

from mmtune.data import audio
from mmtune.data.audio import fit_time, load_npy_spectrogram, read_wav, spectrogram, spectrogram_shape
from mmtune.data.errors import CorruptFileError

PAPER_SHAPE = (1, 257, 299)  # 1 + (48000 - 512) // 159
CODE_SHAPE = (1, 257, 188)  # 1 + 66150 // 353


def write_pcm(path: Path, samples: np.ndarray, rate: int, width: int) -> Path:
    """Write integer samples of shape (frames, channels) as a PCM WAV of ``width`` bytes per sample."""
    frames, channels = samples.shape
    if width == 1:
        raw = (samples + 128).astype(np.uint8).tobytes()
    elif width == 3:
        raw = samples.astype("<i4").view(np.uint8).reshape(frames, channels, 4)[..., :3].tobytes()
    else:
        raw = samples.astype({2: "<i2", 4: "<i4"}[width]).tobytes()
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(raw)
    return path


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_sine16(path: Path, freq: float, seconds: float, rate: int) -> Path:
    return write_pcm(path, np.round(sine(freq, seconds, rate) * 32767)[:, None], rate, 2)


def reference_log_stft(signal: np.ndarray, hop: int, center: bool, n_fft: int = 512) -> np.ndarray:
    """librosa.stft's definition in plain numpy: periodic Hann, zero padding of n_fft // 2 when centred."""
    if center:
        signal = np.pad(signal, n_fft // 2, mode="constant")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    count = 1 + (len(signal) - n_fft) // hop
    frames = np.stack([signal[i * hop : i * hop + n_fft] * window for i in range(count)], axis=1)
    return np.log(np.abs(np.fft.rfft(frames, axis=0)) + 1e-7)[None]


@pytest.fixture(params=["soundfile", "wave"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with each decoder; 'wave' hides soundfile so read_wav falls back to the stdlib."""
    if request.param == "wave":
        monkeypatch.setattr(audio, "soundfile", None)
    return request.param


# ---------------------------------------------------------------------------------------------- read_wav


@pytest.mark.parametrize(
    ("width", "values", "scale"),
    [
        (1, [-128, -64, 0, 64, 127], 2**7),
        (2, [-32768, -16384, 0, 1, 16384, 32767], 2**15),
        (3, [-(2**23), -12345, 0, 1, 4_000_000, 2**23 - 1], 2**23),
        (4, [-(2**31), -(2**20), 0, 2**16, 2**31 - 256], 2**31),
    ],
)
def test_pcm_is_scaled_like_libsndfile(tmp_path: Path, reader: str, width: int, values: list[int], scale: int) -> None:
    path = write_pcm(tmp_path / "clip.wav", np.array(values)[:, None], 16000, width)
    samples, rate = read_wav(path)
    assert rate == 16000
    assert samples.dtype == np.float32 and samples.shape == (len(values),)
    np.testing.assert_array_equal(samples, np.array(values, dtype=np.float32) / np.float32(scale))


def test_stereo_is_averaged_to_mono(tmp_path: Path, reader: str) -> None:
    left, right = np.full(100, 16384), np.full(100, -8192)  # 0.5 and -0.25
    path = write_pcm(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 44100, 2)
    samples, rate = read_wav(path)
    assert rate == 44100 and samples.shape == (100,)
    np.testing.assert_allclose(samples, 0.125)


def test_readers_agree_on_a_real_clip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_sine16(tmp_path / "sine.wav", 440.0, 0.5, 16000)
    with_soundfile, rate_sf = read_wav(path)
    monkeypatch.setattr(audio, "soundfile", None)
    with_wave, rate_wave = read_wav(path)
    assert rate_sf == rate_wave == 16000
    np.testing.assert_array_equal(with_soundfile, with_wave)
    assert abs(with_wave).max() == pytest.approx(0.5, abs=1e-4)


def test_float_wav_needs_soundfile_and_is_clipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "float.wav"
    soundfile.write(path, np.array([0.25, -1.5, 1.5], np.float32), 8000, subtype="FLOAT")
    samples, _ = read_wav(path)
    np.testing.assert_array_equal(samples, [0.25, -1.0, 1.0])  # overshoot clipped to [-1, 1]
    monkeypatch.setattr(audio, "soundfile", None)
    with pytest.raises(CorruptFileError, match="pip install soundfile"):
        read_wav(path)


@pytest.mark.parametrize("damage", ["random bytes", "truncated header", "header only", "empty"])
def test_undecodable_audio_raises_corrupt_file_error(tmp_path: Path, reader: str, damage: str) -> None:
    good = write_sine16(tmp_path / "good.wav", 440.0, 0.1, 16000).read_bytes()
    content = {
        "random bytes": np.random.default_rng(0).bytes(2000),
        "truncated header": good[:20],
        "header only": good[:44],
        "empty": b"",
    }[damage]
    path = tmp_path / "broken.wav"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError) as info:
        read_wav(path)
    assert info.value.path == path
    assert info.value.reason
    assert str(path) in str(info.value)


def test_missing_audio_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_wav(tmp_path / "nope.wav")


def test_corrupt_file_error_survives_pickling(tmp_path: Path) -> None:
    err = pickle.loads(pickle.dumps(CorruptFileError(tmp_path / "x.wav", "bad header")))
    assert err.path == tmp_path / "x.wav" and err.reason == "bad header"
    assert "x.wav" in str(err) and "bad header" in str(err)


# ---------------------------------------------------------------------------------------------- spectrogram


@pytest.mark.parametrize("seconds_of_audio", [0.4, 1.3, 3.0, 4.7])
@pytest.mark.parametrize("rate", [16000, 44100])
def test_shapes_are_fixed_whatever_the_clip_length(seconds_of_audio: float, rate: int) -> None:
    clip = sine(440.0, seconds_of_audio, rate)
    paper = spectrogram(clip, rate, mode="paper")
    code = spectrogram(clip, rate, mode="code")
    assert paper.shape == PAPER_SHAPE and code.shape == CODE_SHAPE
    assert paper.dtype == code.dtype == np.float32
    assert np.isfinite(paper).all() and np.isfinite(code).all()


def test_shape_follows_seconds() -> None:
    assert spectrogram_shape(mode="paper") == PAPER_SHAPE
    assert spectrogram_shape(mode="code") == CODE_SHAPE
    assert spectrogram_shape(mode="paper", seconds=10) == (1, 257, 1 + (160_000 - 512) // 159)
    assert spectrogram_shape(mode="code", seconds=10) == (1, 257, 1 + 220_500 // 353)
    clip = sine(440.0, 2.0, 16000)
    assert spectrogram(clip, 16000, mode="paper", seconds=10).shape == (1, 257, 1004)
    assert spectrogram(clip, 16000, mode="code", seconds=10).shape == (1, 257, 625)


def test_code_mode_matches_the_official_recipe() -> None:
    # The official code on a 22.05 kHz clip (so no resampling): tile 3x, cut to 3 s, clip, centred STFT.
    samples = np.random.default_rng(0).uniform(-1.3, 1.3, size=int(1.7 * 22050)).astype(np.float32)
    official = np.clip(np.tile(samples, 3)[: 22050 * 3], -1.0, 1.0)
    expected = reference_log_stft(official, hop=353, center=True)
    np.testing.assert_allclose(spectrogram(samples, 22050, mode="code"), expected, atol=2e-3)


def test_paper_mode_matches_an_uncentred_stft_of_the_tiled_clip() -> None:
    samples = np.random.default_rng(1).uniform(-1, 1, size=int(1.2 * 16000)).astype(np.float32)
    tiled = np.tile(samples, 3)[:48000]  # 3.6 s of audio, cut to 3 s
    expected = reference_log_stft(tiled, hop=159, center=False)
    np.testing.assert_allclose(spectrogram(samples, 16000, mode="paper"), expected, atol=2e-3)


def test_long_clips_are_cut_not_resampled_in_time() -> None:
    long_clip = np.random.default_rng(2).uniform(-1, 1, size=5 * 16000).astype(np.float32)
    np.testing.assert_array_equal(
        spectrogram(long_clip, 16000, mode="paper"), spectrogram(long_clip[:48000], 16000, mode="paper")
    )


def test_only_code_mode_clips_the_waveform() -> None:
    loud = sine(440.0, 3.0, 22050, amplitude=2.0)
    clipped = np.clip(loud, -1, 1)
    np.testing.assert_array_equal(spectrogram(loud, 22050, mode="code"), spectrogram(clipped, 22050, mode="code"))
    assert not np.allclose(spectrogram(loud, 16000, mode="paper"), spectrogram(clipped, 16000, mode="paper"))


def dominant_bin(spec: np.ndarray) -> int:
    return int(spec[0].mean(axis=1).argmax())


def test_a_sine_lands_in_its_frequency_bin() -> None:
    # bin = f * n_fft / sample_rate: 1000 Hz is bin 32 at 16 kHz, bin 23.2 at 22.05 kHz.
    clip = sine(1000.0, 3.0, 16000)
    assert dominant_bin(spectrogram(clip, 16000, mode="paper")) == 32
    assert dominant_bin(spectrogram(clip, 16000, mode="code")) == 23


def test_paper_mode_resamples_to_16_khz(tmp_path: Path) -> None:
    # Read at 44.1 kHz: without resampling 1000 Hz would show at bin 1000 * 512 / 44100 ≈ 12.
    path = write_sine16(tmp_path / "cd.wav", 1000.0, 2.0, 44100)
    clip, rate = read_wav(path)
    assert rate == 44100
    assert dominant_bin(spectrogram(clip, rate, mode="paper")) == 32
    assert dominant_bin(spectrogram(clip, rate, mode="code")) == 23
    # ... and with the same magnitude as the same tone recorded at 16 kHz (log differences ≈ relative ones).
    native = spectrogram(sine(1000.0, 2.0, 16000), 16000, mode="paper")
    np.testing.assert_allclose(spectrogram(clip, rate, mode="paper")[0, 31:34], native[0, 31:34], atol=0.02)


def test_silence_is_the_log_floor() -> None:
    spec = spectrogram(np.zeros(16000, np.float32), 16000, mode="paper")
    np.testing.assert_allclose(spec, np.log(np.float32(1e-7)))


def test_bad_spectrogram_arguments_are_named() -> None:
    clip = sine(440.0, 1.0, 16000)
    with pytest.raises(ValueError, match="Did you mean 'paper'"):
        spectrogram(clip, 16000, mode="papr")
    with pytest.raises(ValueError, match="seconds"):
        spectrogram(clip, 16000, seconds=0.01)
    with pytest.raises(ValueError, match="mono"):
        spectrogram(np.stack([clip, clip]), 16000)
    with pytest.raises(ValueError, match="mono"):
        spectrogram(np.zeros(0, np.float32), 16000)


# ---------------------------------------------------------------------------------------------- .npy, fit_time


@pytest.mark.parametrize("shape", [(257, 40), (1, 257, 40)])
def test_npy_spectrograms_come_back_as_1_f_t_float32(tmp_path: Path, shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(0).normal(size=shape)  # float64 on disk
    np.save(tmp_path / "spec.npy", array)
    loaded = load_npy_spectrogram(tmp_path / "spec.npy")
    assert loaded.shape == (1, 257, 40) and loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, array.reshape(1, 257, 40).astype(np.float32))


def test_bad_npy_files_raise_corrupt_file_error(tmp_path: Path) -> None:
    bad = {
        "three_channels.npy": lambda p: np.save(p, np.zeros((3, 257, 40))),
        "one_d.npy": lambda p: np.save(p, np.zeros(40)),
        "objects.npy": lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True),
        "complex.npy": lambda p: np.save(p, np.zeros((4, 4), np.complex64)),
        "nan.npy": lambda p: np.save(p, np.full((4, 4), np.nan)),
        "random.npy": lambda p: p.write_bytes(np.random.default_rng(0).bytes(500)),
        "archive.npy": lambda p: np.savez(p.open("wb"), spec=np.zeros((4, 4))),
    }
    for name, write in bad.items():
        path = tmp_path / name
        write(path)
        with pytest.raises(CorruptFileError) as info:
            load_npy_spectrogram(path)
        assert info.value.path == path, name
    with pytest.raises(FileNotFoundError):
        load_npy_spectrogram(tmp_path / "missing.npy")


def test_fit_time_crops_or_tiles_the_last_axis() -> None:
    spec = np.arange(2 * 3, dtype=np.float32).reshape(1, 2, 3)  # time steps [0 1 2], [3 4 5]
    np.testing.assert_array_equal(fit_time(spec, 2), spec[..., :2])
    np.testing.assert_array_equal(fit_time(spec, 3), spec)
    np.testing.assert_array_equal(fit_time(spec, 7)[0, 0], [0, 1, 2, 0, 1, 2, 0])
    assert fit_time(spec, 7).shape == (1, 2, 7) and fit_time(spec, 7).flags.c_contiguous
    with pytest.raises(ValueError, match="frames"):
        fit_time(spec, 0)
    with pytest.raises(ValueError, match="no time frames"):
        fit_time(np.zeros((1, 2, 0), np.float32), 4)
