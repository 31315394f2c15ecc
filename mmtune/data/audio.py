"""Audio decoding and log-magnitude spectrograms for the CREMA-D and Kinetics-Sounds loaders.

Decoding
--------
:func:`read_wav` returns a mono float32 waveform in [-1, 1] and its sample rate. It deliberately
avoids ``torchaudio.load``: since torchaudio 2.9 that routes through torchcodec, which is not
installed. It uses ``soundfile`` (libsndfile: any PCM or float WAV, FLAC, OGG, …) when importable,
else the standard-library ``wave`` module, which reads integer PCM only (8-bit unsigned, 16/24/32-bit
signed). Integers are scaled by 2^(bits−1) (8-bit: (x − 128)/128), exactly as libsndfile does, so
both readers give the same numbers. Channels are averaged to mono, as ``librosa.load`` does. Float
files may overshoot; the result is clipped to [-1, 1]. A file that exists but cannot be decoded,
or holds no samples, raises :class:`~mmtune.data.errors.CorruptFileError`.

Spectrograms: two readings of "the CREMA-D spectrogram"
-------------------------------------------------------
The balancing papers (OGM-GE: Peng et al., CVPR 2022, arXiv:2203.15332; OPM and the extended OGM-GE:
Wei et al., TPAMI 2024, arXiv:2410.11582) state that a CREMA-D clip becomes a **257 × 299**
spectrogram, with a window of 512 and an overlap of 353. The official OGM-GE code computes something
else, a **257 × 188** spectrogram. :func:`spectrogram` gives either, by ``mode``; both return
``log(|STFT| + 1e-7)`` as float32 of shape (1, F, T), F = n_fft // 2 + 1 = 257.

``mode="paper"``: resample to 16 kHz, repeat the clip (``np.tile``, as the official code does) and
crop to exactly ``seconds`` = 3 s = 48 000 samples, STFT with a periodic Hann window of 512,
n_fft = 512, hop = 512 − 353 = 159, no centring (no padding). Frames:

    T = 1 + (48 000 − 512) // 159 = 1 + 298 = 299.

This is our reading: the papers give only the shape and the window/overlap, and 16 kHz (CREMA-D's
native rate), 3 s and no padding is the setting that yields exactly 299 frames with those numbers.

``mode="code"``: what ``dataset/CramedDataset.py`` of GeWu-Lab/OGM-GE_CVPR2022 computes::

    samples, rate = librosa.load(path, sr=22050)           # resample to 22.05 kHz, mono
    resamples = np.tile(samples, 3)[:22050 * 3]             # 66 150 samples
    resamples[resamples > 1.] = 1.; resamples[resamples < -1.] = -1.
    spectrogram = librosa.stft(resamples, n_fft=512, hop_length=353)
    spectrogram = np.log(np.abs(spectrogram) + 1e-7)

``librosa.stft`` defaults to a periodic Hann window of n_fft = 512 and ``center=True``: the signal is
padded by n_fft // 2 = 256 samples on both sides. Since librosa 0.10 that padding is zeros
(``pad_mode="constant"``; before 0.10 it was ``"reflect"``); we use ``torch.stft(center=True,
pad_mode="constant")``, i.e. librosa ≥ 0.10. Frames:

    T = 1 + 66 150 // 353 = 1 + 187 = 188.

Two deliberate differences from the official code, in both modes:

* **Fill, don't triple.** The official ``np.tile(samples, 3)`` only reaches 3 s for clips of at least
  1 s, so a shorter clip gives fewer frames (a ragged batch). We tile as often as needed to fill
  ``seconds``; for clips of at least 1 s the result is identical.
* **Resampler.** librosa ≥ 0.10 resamples with soxr ("soxr_hq"); we use
  ``torchaudio.functional.resample`` (windowed sinc). They differ only near the Nyquist frequency,
  and CREMA-D is recorded at 16 kHz, so ``paper`` does not resample it at all and ``code`` upsamples
  it, where both resamplers leave the band above 8 kHz empty.

``seconds`` (default 3) sets the clip length for longer datasets (Kinetics-Sounds uses 10 s); the
shape follows (:func:`spectrogram_shape`). Datasets that ship precomputed spectrograms are read with
:func:`load_npy_spectrogram`, and :func:`fit_time` crops or tiles any spectrogram to a fixed number
of frames, so that every sample of a split has the same shape.
"""

from __future__ import annotations

import math
import os
import wave as stdlib_wave  # `wave` is the waveform argument's name below
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import torch
import torchaudio.functional as audio_functional

from mmtune.data.errors import CorruptFileError
from mmtune.errors import unknown_name_message

try:  # optional: the standard-library reader covers integer PCM WAV
    import soundfile
except (ImportError, OSError):  # OSError: the package is there but libsndfile is not
    soundfile = None

__all__ = [
    "LOG_EPSILON",
    "RECIPES",
    "SpectrogramRecipe",
    "fit_time",
    "load_npy_spectrogram",
    "read_wav",
    "spectrogram",
    "spectrogram_shape",
]

LOG_EPSILON = 1e-7  # log(|STFT| + ε): the official code's floor, log(1e-7) ≈ −16.1 for silence


@dataclass(frozen=True)
class SpectrogramRecipe:
    """How a waveform becomes a log-magnitude spectrogram (see the module docstring)."""

    sample_rate: int  # Hz the clip is resampled to
    n_fft: int  # FFT size = periodic Hann window length; F = n_fft // 2 + 1 frequency bins
    hop_length: int  # samples between successive frames (window − overlap)
    center: bool  # zero-pad n_fft // 2 samples on both sides (librosa's default) or not at all
    clip: bool  # clip the waveform to [-1, 1] before the STFT (the official code does)

    def num_samples(self, seconds: float) -> int:
        return round(seconds * self.sample_rate)

    def num_frames(self, seconds: float) -> int:
        samples = self.num_samples(seconds)
        if self.center:
            return 1 + samples // self.hop_length
        return 1 + (samples - self.n_fft) // self.hop_length

    def shape(self, seconds: float) -> tuple[int, int, int]:
        return (1, self.n_fft // 2 + 1, self.num_frames(seconds))


RECIPES: dict[str, SpectrogramRecipe] = {
    "paper": SpectrogramRecipe(sample_rate=16_000, n_fft=512, hop_length=159, center=False, clip=False),
    "code": SpectrogramRecipe(sample_rate=22_050, n_fft=512, hop_length=353, center=True, clip=True),
}


def _recipe(mode: str, seconds: float) -> SpectrogramRecipe:
    if mode not in RECIPES:
        raise ValueError(unknown_name_message("spectrogram mode", mode, RECIPES))
    recipe = RECIPES[mode]
    shortest = recipe.n_fft / recipe.sample_rate
    if not (math.isfinite(seconds) and seconds >= shortest):
        raise ValueError(
            f"`seconds` must be a finite number >= {shortest:.4f} (one {recipe.n_fft}-sample window at "
            f"{recipe.sample_rate} Hz) for mode '{mode}', but got {seconds=}."
        )
    return recipe


def spectrogram_shape(*, mode: str = "paper", seconds: float = 3.0) -> tuple[int, int, int]:
    """The (1, F, T) shape :func:`spectrogram` returns: (1, 257, 299) for paper, (1, 257, 188) for code."""
    return _recipe(mode, seconds).shape(seconds)


# ---------------------------------------------------------------------------------------------- decoding


def _pcm_to_float(raw: bytes, sample_width: int) -> np.ndarray:
    """Little-endian integer PCM bytes -> float32, scaled by 2^(bits−1) as libsndfile does."""
    if sample_width == 1:  # 8-bit WAV is unsigned, centred on 128
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if sample_width == 2:
        return np.frombuffer(raw, "<i2").astype(np.float32) / 2.0**15
    if sample_width == 3:  # no 24-bit dtype: put each sample in the top 3 bytes of an int32, shift back
        padded = np.zeros((len(raw) // 3, 4), np.uint8)
        padded[:, 1:] = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        return (padded.view("<i4")[:, 0] >> 8).astype(np.float32) / 2.0**23
    if sample_width == 4:
        return np.frombuffer(raw, "<i4").astype(np.float32) / 2.0**31
    raise stdlib_wave.Error(f"unsupported PCM sample width of {sample_width} bytes")


def _decode_with_wave(file: BinaryIO) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 and the rate, with the standard library (integer PCM only)."""
    with stdlib_wave.open(file, "rb") as reader:
        channels, width, rate = reader.getnchannels(), reader.getsampwidth(), reader.getframerate()
        raw = reader.readframes(reader.getnframes())
    whole = len(raw) - len(raw) % (width * channels)  # a truncated file may end mid-frame
    return _pcm_to_float(raw[:whole], width).reshape(-1, channels), rate


def _decode_with_soundfile(file: BinaryIO) -> tuple[np.ndarray, int]:
    samples, rate = soundfile.read(file, dtype="float32", always_2d=True)
    return samples, int(rate)


def _decode_errors() -> tuple[type[Exception], ...]:
    errors: tuple[type[Exception], ...] = (stdlib_wave.Error, EOFError, ValueError)
    return errors + ((soundfile.SoundFileError,) if soundfile is not None else ())


def read_wav(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Decode an audio file into a mono float32 waveform in [-1, 1] and its sample rate in Hz.

    A missing file raises ``FileNotFoundError``; a file that cannot be decoded, or that holds no
    samples (a header only), raises :class:`CorruptFileError` naming the file and the reason.
    """
    with open(path, "rb") as file:  # missing / unreadable paths raise the usual OSError here
        try:
            if soundfile is not None:
                samples, rate = _decode_with_soundfile(file)
            else:
                samples, rate = _decode_with_wave(file)
        except _decode_errors() as err:
            reason = str(err) or type(err).__name__
            if soundfile is None:
                reason += " (the standard-library reader reads integer PCM WAV only; `pip install soundfile`)"
            raise CorruptFileError(path, reason) from err
    if samples.shape[0] == 0:
        raise CorruptFileError(path, "it holds no audio samples (a header only, or truncated)")
    mono = samples.mean(axis=1, dtype=np.float32)
    return np.clip(mono, -1.0, 1.0), rate


def load_npy_spectrogram(path: str | os.PathLike[str]) -> np.ndarray:
    """A precomputed spectrogram saved with ``np.save``, as float32 (1, F, T).

    Accepts (F, T) or (1, F, T) arrays of real numbers. Anything else (other shapes, complex or
    object arrays, NaN/inf values, a file that is not a .npy array) raises :class:`CorruptFileError`.
    """
    try:
        array = np.load(path, allow_pickle=False)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (OSError, ValueError, EOFError) as err:
        raise CorruptFileError(path, f"not a readable .npy array ({err})") from err
    if isinstance(array, np.lib.npyio.NpzFile):
        array.close()
        raise CorruptFileError(path, "it is an .npz archive; expected a single array saved with np.save")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise CorruptFileError(path, f"expected a real-valued array, got dtype {array.dtype}")
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3 or array.shape[0] != 1:
        raise CorruptFileError(path, f"expected a spectrogram of shape (F, T) or (1, F, T), got {array.shape}")
    if not np.isfinite(array).all():
        raise CorruptFileError(path, "it contains NaN or infinite values")
    return np.ascontiguousarray(array, dtype=np.float32)


# ---------------------------------------------------------------------------------------------- spectrograms


def _check_waveform(wave: np.ndarray, sample_rate: int) -> None:
    if wave.ndim != 1 or wave.shape[0] == 0:
        raise ValueError(
            f"expected a non-empty mono waveform of shape (samples,), got shape {wave.shape}; "
            "average the channels first (read_wav does)."
        )
    if sample_rate <= 0:
        raise ValueError(f"`sample_rate` must be > 0 Hz, but got {sample_rate=}.")


def _resample(wave: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    if sample_rate == target_rate:
        return wave
    tensor = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    return audio_functional.resample(tensor, orig_freq=sample_rate, new_freq=target_rate).numpy()


def _tile_to(wave: np.ndarray, samples: int) -> np.ndarray:
    """Repeat the clip end to end (as the official code's np.tile does) and crop to ``samples``."""
    return np.tile(wave, math.ceil(samples / wave.shape[0]))[:samples]


def spectrogram(
    wave: np.ndarray, sample_rate: int, *, mode: str = "paper", seconds: float = 3.0
) -> np.ndarray:
    """Log-magnitude spectrogram ``log(|STFT| + 1e-7)`` of a mono waveform, float32 (1, F, T).

    ``mode="paper"`` gives (1, 257, 299) and ``mode="code"`` (1, 257, 188) for the default 3 s; see
    the module docstring for the two recipes and :func:`spectrogram_shape` for other ``seconds``.
    Clips shorter than ``seconds`` are repeated, longer ones are cut.
    """
    recipe = _recipe(mode, seconds)
    _check_waveform(wave, sample_rate)
    samples = _tile_to(_resample(wave, sample_rate, recipe.sample_rate), recipe.num_samples(seconds))
    signal = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    if recipe.clip:
        signal = signal.clamp(-1.0, 1.0)
    stft = torch.stft(
        signal,
        n_fft=recipe.n_fft,
        hop_length=recipe.hop_length,
        win_length=recipe.n_fft,
        window=torch.hann_window(recipe.n_fft),  # periodic, like librosa's get_window("hann", fftbins=True)
        center=recipe.center,
        pad_mode="constant",  # only used when center=True: librosa >= 0.10 pads with zeros
        return_complex=True,
    )
    return torch.log(stft.abs() + LOG_EPSILON).unsqueeze(0).numpy()


def fit_time(spec: np.ndarray, frames: int) -> np.ndarray:
    """Crop (keep the first ``frames``) or tile (repeat end to end) the last, time axis to ``frames``."""
    if frames < 1:
        raise ValueError(f"`frames` must be >= 1, but got {frames=}.")
    length = spec.shape[-1]
    if length == 0:
        raise ValueError(f"cannot fit a spectrogram with no time frames (shape {spec.shape}) to {frames} frames.")
    if length < frames:
        spec = np.tile(spec, (1,) * (spec.ndim - 1) + (math.ceil(frames / length),))
    return np.ascontiguousarray(spec[..., :frames])
