"""Speaker encoder of the Base checkpoints: log-mel front end + ECAPA-TDNN x-vector (no BatchNorm).

Parameter names equal the official ``speaker_encoder.*`` state-dict keys without the prefix. Every conv is
a Conv1d with bias, ``padding="same"`` and reflect padding, as in the official network.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import SpeakerEncoderConfig
from ..errors import InputError

SAMPLE_RATE = 24000
N_FFT = 1024
HOP = 256
WIN = 1024
N_MELS = 128
FMAX = 12000.0

# Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (27 mels per factor 6.4).
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    log_part = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, log_part, hz / _F_SP)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_part = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log_part, _F_SP * mel)


def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                   fmin: float = 0.0, fmax: float | None = FMAX) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular mel filters ``[n_mels, n_fft // 2 + 1]`` float32.

    Same values as ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)``
    (computed in float64, rounded to float32 before and after the area normalisation, like librosa).
    """
    fmax = sr / 2.0 if fmax is None else fmax
    fft_hz = np.arange(n_fft // 2 + 1) * (1.0 / (n_fft * (1.0 / sr)))  # as numpy.fft.rfftfreq
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    area_norm = 2.0 / (edges[2:] - edges[:-2])
    return (weights.astype(np.float64) * area_norm[:, None]).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> torch.Tensor:
    return torch.from_numpy(mel_filterbank(sr, n_fft, n_mels, fmin, fmax))


def mel_spectrogram(wav: torch.Tensor) -> torch.Tensor:
    """Log-mel features of 24 kHz audio, computed in float32: ``[B, N] -> [B, N // 256, 128]``.

    Reflect pad 384 both sides, STFT (n_fft 1024, hop 256, Hann 1024, no centering), magnitude
    ``sqrt(re² + im² + 1e-9)``, mel filters 0–12 kHz, ``log(max(mel, 1e-5))``. Needs N > 384.
    """
    if wav.dim() != 2:
        raise InputError(f"mel_spectrogram expects a waveform batch [B, N], got shape {tuple(wav.shape)}")
    pad = (N_FFT - HOP) // 2
    if wav.shape[-1] <= pad:
        raise InputError(f"audio too short for the speaker encoder: {wav.shape[-1]} samples (need > {pad})")
    y = F.pad(wav.float()[:, None], (pad, pad), mode="reflect")[:, 0]
    window = torch.hann_window(WIN, device=y.device)
    spec = torch.stft(y, N_FFT, hop_length=HOP, win_length=WIN, window=window, center=False,
                      onesided=True, return_complex=True)
    magnitude = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-9)  # [B, 513, frames]
    mel = torch.matmul(_mel_basis(SAMPLE_RATE, N_FFT, N_MELS, 0.0, FMAX).to(y.device), magnitude)
    return torch.log(torch.clamp(mel, min=1e-5)).transpose(1, 2)


def _conv(c_in: int, c_out: int, kernel: int = 1, dilation: int = 1) -> nn.Conv1d:
    return nn.Conv1d(c_in, c_out, kernel, dilation=dilation, padding="same", padding_mode="reflect")


class _TDNN(nn.Module):
    """ReLU(Conv1d same/reflect): ``[B, C_in, T] -> [B, C_out, T]``."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.conv = _conv(c_in, c_out, kernel, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class _Res2Net(nn.Module):
    """Split channels into ``scale`` groups; group 0 passes, group i>0 = TDNN(group_i + out_{i-1})."""

    def __init__(self, channels: int, scale: int, kernel: int, dilation: int) -> None:
        super().__init__()
        width = channels // scale
        self.scale = scale
        self.blocks = nn.ModuleList(_TDNN(width, width, kernel, dilation) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.chunk(x, self.scale, dim=1)
        outs = [parts[0]]
        for i, block in enumerate(self.blocks, start=1):
            outs.append(block(parts[i] if i == 1 else parts[i] + outs[-1]))
        return torch.cat(outs, dim=1)


class _SqueezeExcite(nn.Module):
    """Channel gates from the time-mean: ``x * sigmoid(conv2(relu(conv1(mean_t x))))``."""

    def __init__(self, channels: int, se_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv(channels, se_channels)
        self.conv2 = _conv(se_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.conv2(F.relu(self.conv1(x.mean(dim=2, keepdim=True)))))
        return x * gate


class _SERes2NetBlock(nn.Module):
    """TDNN(k1) -> Res2Net -> TDNN(k1) -> squeeze-excite, plus the input (same width)."""

    def __init__(self, c_in: int, c_out: int, scale: int, se_channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.tdnn1 = _TDNN(c_in, c_out, 1, 1)
        self.res2net_block = _Res2Net(c_out, scale, kernel, dilation)
        self.tdnn2 = _TDNN(c_out, c_out, 1, 1)
        self.se_block = _SqueezeExcite(c_out, se_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x)))) + x


def _weighted_stats(x: torch.Tensor, w: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over time of ``x [B, C, T]`` with weights ``w`` (summing to 1 over T) -> 2 x ``[B, C]``."""
    mean = (w * x).sum(2)
    var = (w * (x - mean.unsqueeze(2)).pow(2)).sum(2)
    return mean, torch.sqrt(var.clamp(eps))


class _AttentiveStatsPool(nn.Module):
    """Attentive statistics pooling with global context: ``[B, C, T] -> [B, 2C, 1]``."""

    def __init__(self, channels: int, attention_channels: int) -> None:
        super().__init__()
        self.eps = 1e-12
        self.tdnn = _TDNN(channels * 3, attention_channels, 1, 1)
        self.conv = _conv(attention_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[-1]
        uniform = torch.full((x.shape[0], 1, t), 1.0 / t, dtype=x.dtype, device=x.device)
        mean, std = _weighted_stats(x, uniform, self.eps)
        context = torch.cat([x, mean.unsqueeze(2).expand(-1, -1, t), std.unsqueeze(2).expand(-1, -1, t)], dim=1)
        attention = F.softmax(self.conv(torch.tanh(self.tdnn(context))), dim=2)
        mean, std = _weighted_stats(x, attention, self.eps)
        return torch.cat((mean, std), dim=1).unsqueeze(2)


class SpeakerEncoder(nn.Module):
    """ECAPA-TDNN: log-mel ``[B, frames, mel_dim]`` -> speaker embedding ``[B, enc_dim]``."""

    def __init__(self, cfg: SpeakerEncoderConfig) -> None:
        super().__init__()
        ch, ks, dil = cfg.enc_channels, cfg.enc_kernel_sizes, cfg.enc_dilations
        if not len(ch) == len(ks) == len(dil):
            raise ValueError("speaker encoder: enc_channels, enc_kernel_sizes and enc_dilations differ in length")
        self.cfg = cfg
        blocks: list[nn.Module] = [_TDNN(cfg.mel_dim, ch[0], ks[0], dil[0])]
        for i in range(1, len(ch) - 1):
            blocks.append(_SERes2NetBlock(ch[i - 1], ch[i], cfg.enc_res2net_scale, cfg.enc_se_channels,
                                          ks[i], dil[i]))
        self.blocks = nn.ModuleList(blocks)
        self.mfa = _TDNN(ch[-1], ch[-1], ks[-1], dil[-1])
        self.asp = _AttentiveStatsPool(ch[-1], cfg.enc_attention_channels)
        self.fc = _conv(ch[-1] * 2, cfg.enc_dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """``mel [B, frames, mel_dim]`` (module dtype) -> ``[B, enc_dim]``."""
        h = mel.transpose(1, 2)
        outs = []
        for block in self.blocks:
            h = block(h)
            outs.append(h)
        h = self.mfa(torch.cat(outs[1:], dim=1))
        return self.fc(self.asp(h)).squeeze(-1)

    @torch.no_grad()
    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        """24 kHz audio ``[B, N]`` -> ``[B, enc_dim]``; mel in float32, then cast to the module dtype.

        Rows are pooled over all their frames (no masking): pass equal-length, unpadded rows only, or one
        row at a time, which is what the official code does.
        """
        weight = self.fc.weight
        mel = mel_spectrogram(wav.to(weight.device))
        return self(mel.to(weight.dtype))
