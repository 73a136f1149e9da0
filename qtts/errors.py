"""Exceptions raised by qtts. Every user-facing failure is one of these, with a message naming the problem."""

from __future__ import annotations


class QttsError(Exception):
    """Base class of all qtts errors."""


class InputError(QttsError, ValueError):
    """Bad user input: text, voice, language, audio, sampling parameters."""


class CheckpointError(QttsError):
    """A checkpoint folder or repo that cannot be loaded: missing files, bad config, wrong tensors."""


class UnsupportedModeError(InputError):
    """The requested voice mode is not supported by this checkpoint kind."""
