"""qtts: a streaming inference engine for the Qwen3-TTS 12 Hz models.

    import qtts
    tts = qtts.TTS.from_pretrained("Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice")
    result = tts.synthesize("Hello there.", voice=qtts.Speaker("ryan"), language="english")
    result.audio, result.sample_rate
"""

from .api import TTS, Synthesis, SynthesisOptions
from .errors import CheckpointError, InputError, QttsError, UnsupportedModeError
from .request import Sampling
from .session import StreamSession
from .stream import AudioChunk, ChunkPolicy
from .voices import Clone, ClonePrompt, Design, Speaker

__version__ = "0.1.0"
__all__ = [
    "TTS", "Synthesis", "SynthesisOptions", "Sampling", "AudioChunk", "ChunkPolicy", "StreamSession",
    "Speaker", "Design", "Clone", "ClonePrompt",
    "QttsError", "InputError", "CheckpointError", "UnsupportedModeError", "__version__",
]
