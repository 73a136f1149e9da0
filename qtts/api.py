"""The public library API: ``TTS.from_pretrained(...)``, ``synthesize``, ``synthesize_batch``.

``TTS`` ties the pieces together: checkpoint loading (``weights``), prompts (``prompt`` / ``embed``), the
frame loop (``loop``) and the codec. It keeps no per-request state, so one instance serves many requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .accel import AccelOptions, check_device, make_frame_step, parse_accel
from .codec.chunks import make_chunk_decoder
from .codec.tokenizer import SpeechTokenizer
from .config import GenerationConfig, ModelConfig, SpeechTokenizerConfig, read_json
from .embed import embed_plan
from .errors import CheckpointError, InputError, UnsupportedModeError
from .gemv import use_row_kernels_
from .generate import StreamParams
from .loop import StreamInput, generate_codes
from .model.fuse import fuse_projections_, unfuse_projections_
from .model.tts import TTSModel
from .packed import pack_linear_weights_
from .prompt import PromptBuilder, PromptPlan, VoiceSpec, check_mode
from .quant import QuantSummary, parse_quantize, quantize_int8_
from .request import Sampling, frame_budget
from .runner import AudioChunk, ChunkPolicy, Job, Runner, SessionText, Sink
from .session import StreamSession
from .stream import iterate_in_thread, run_job
from .text import TextTokenizer
from .textfeed import TextFeed
from .voices import Clone, ClonePrompt, Design, Speaker, Voice
from .weights import build_and_load, read_safetensors, resolve_checkpoint

DEFAULT_SPEAKER = "vivian"


@dataclasses.dataclass(frozen=True)
class Synthesis:
    """Result of one synthesis: ``audio [N]`` float32 in [-1, 1] at ``sample_rate``, the generated
    ``codes [T, 16]`` (int64), and ``finish_reason`` (``stop``: the model ended; ``length``: frame budget)."""

    audio: np.ndarray
    sample_rate: int
    codes: torch.Tensor
    finish_reason: str

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A request turned into model inputs: plan, stream input, and reference codes (ICL clones)."""

    plan: PromptPlan
    stream: StreamInput
    ref_codes: torch.Tensor | None

    def job(self, sink: Sink, policy: ChunkPolicy | None = None, started: float | None = None,
            on_frame: Callable[[], None] | None = None) -> Job:
        """A runner job streaming this request's audio chunks into ``sink``."""
        s = self.stream
        return Job(s.params, sink, prompt=s.prompt, trailing=s.trailing, max_new_tokens=s.max_new_tokens,
                   ref_codes=self.ref_codes, policy=policy, started=started, on_frame=on_frame)


@dataclasses.dataclass(frozen=True)
class PreparedSession:
    """A text-in session turned into model inputs: its text feed (push text there), sampling and voice."""

    text: SessionText
    params: StreamParams
    ref_codes: torch.Tensor | None

    @property
    def feed(self) -> TextFeed:
        return self.text.feed

    def job(self, sink: Sink, policy: ChunkPolicy | None = None, started: float | None = None,
            on_frame: Callable[[], None] | None = None) -> Job:
        """A runner job that generates as text arrives in ``feed``, streaming chunks into ``sink``."""
        return Job(self.params, sink, session=self.text, ref_codes=self.ref_codes, policy=policy, started=started,
                   on_frame=on_frame)


def _default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class TTS:
    """A loaded Qwen3-TTS 12 Hz checkpoint (any kind: base, custom_voice, voice_design)."""

    def __init__(self, cfg: ModelConfig, generation: GenerationConfig, tokenizer: TextTokenizer,
                 model: TTSModel, codec: SpeechTokenizer) -> None:
        self.cfg, self.generation, self.model, self.codec = cfg, generation, model, codec
        self.prompts = PromptBuilder(cfg, tokenizer)
        self.device = model.talker.codec_head.weight.device
        self.dtype = model.talker.codec_head.weight.dtype
        self.quantization: QuantSummary | None = None  # set by from_pretrained(quantize="int8")
        self.accel = AccelOptions()
        self._runners: dict[int, list[Runner]] = {}  # idle runners by max_batch (keep captured graphs)
        self._runners_lock = threading.Lock()

    # ---- runners and acceleration -------------------------------------------------------------------

    def accelerate(self, *, compile: bool = False, cuda_graphs: bool = False, max_frames: int = 2048,
                   compile_backend: str = "inductor", pipelined: bool | None = None,
                   row_kernels: bool = False, fused: bool = False, codec_stream: bool = False,
                   packed: bool = False) -> None:
        """Run the frame step through ``torch.compile`` and/or CUDA graphs (CUDA only), applied from outside
        the model; ``compile=False, cuda_graphs=False`` returns to eager. Engines and runners made afterwards use
        it; warm-up and capture happen once per runner (``Engine`` s and the pooled runners of
        ``stream`` / ``synthesize`` keep theirs). ``max_frames``: cache slots per stream with static shapes;
        ``compile_backend``: the ``torch.compile`` backend; ``pipelined``: launch frame t+1 before reading frame
        t's results, overlapping host and device work (default: on CUDA only); ``row_kernels``: CPU products
        of a few activation rows (a single stream, a small batch) as a compiled reduction that streams the
        weights faster than torch's CPU ``linear`` (``qtts.gemv``; codes can part from eager at near-ties);
        ``fused``: one product for each block's q/k/v projections and one for gate/up (``qtts.model.fuse``);
        ``codec_stream`` (CUDA): chunk decodes on their own CUDA stream, overlapping the next frame step;
        ``packed`` (CPU): linear weights reordered once for oneDNN (``qtts.packed``; bfloat16 bit for bit, float32
        with last-bit differences; faster products, a second copy of the weights in memory)."""
        self.set_accel(AccelOptions(bool(compile), bool(cuda_graphs), max_frames, compile_backend, pipelined,
                                    bool(row_kernels), bool(fused), bool(codec_stream), bool(packed)))

    def set_accel(self, options: AccelOptions) -> None:
        """``accelerate`` with an ``AccelOptions`` value (e.g. from ``qtts.accel.parse_accel``)."""
        check_device(options, self.device)
        with self._runners_lock:
            self.accel = options
            self._runners = {}
        # Model-wide switches, at once (also for direct module use, e.g. profile): packed copies dropped first,
        # then the projection layout, so that packing and row kernels see the layers that will run.
        pack_linear_weights_(self.model.talker, False)
        if options.fused:
            fuse_projections_(self.model.talker)
        else:
            unfuse_projections_(self.model.talker)
        pack_linear_weights_(self.model.talker, options.packed)
        use_row_kernels_(self.model.talker, options.row_kernels)

    def stream_state_bytes(self) -> int:
        """Device bytes of one batch slot's decode state at ``max_frames`` cache slots (what a static frame step
        preallocates per slot; an eager one grows to this over a stream of that length): the talker's and the
        code predictor's keys and values and the pending text vectors."""
        t, p = self.cfg.talker, self.cfg.talker.code_predictor_config
        size = self.model.talker.codec_head.weight.element_size()
        talker = 2 * t.num_hidden_layers * t.num_key_value_heads * self.accel.max_frames * t.head_dim
        predictor = 2 * p.num_hidden_layers * p.num_key_value_heads * t.num_code_groups * p.head_dim
        return (talker + predictor + 512 * t.hidden_size) * size

    def new_runner(self, max_batch: int = 1, decode: bool = True) -> Runner:
        """A fresh runner over this model with the current acceleration options."""
        chunks = make_chunk_decoder(self.codec.decoder, self.accel.cuda_graphs) if decode else None
        return Runner(self.model.talker, self.tts_pad(), self.codec.decoder if decode else None, self.sample_rate,
                      max_batch, make_frame_step(self.model.talker, self.accel), self.accel.pipelined, chunks,
                      self.accel.codec_stream)

    def take_runner(self, max_batch: int = 1) -> Runner:
        """An idle pooled runner with ``max_batch`` slots (or a new one); hand it back with ``give_runner``."""
        with self._runners_lock:
            pool = self._runners.get(max_batch)
            if pool:
                return pool.pop()
        return self.new_runner(max_batch)

    def give_runner(self, runner: Runner) -> None:
        """Return an idle runner to the pool (dropped if it still has jobs or the options changed)."""
        if not runner.idle or runner.step_fn.static != self.accel.static or runner.pipelined != (
                self.accel.pipelined if self.accel.pipelined is not None else self.device.type == "cuda"):
            return
        with self._runners_lock:
            pool = self._runners.setdefault(runner.max_batch, [])
            if len(pool) < 2:
                pool.append(runner)

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, device: str | torch.device | None = None,
                        dtype: torch.dtype | str | None = None, quantize: str | None = None,
                        accel: str | AccelOptions | None = None) -> TTS:
        """Load a checkpoint folder or Hugging Face repo id. Defaults: CUDA if available (bfloat16), else
        CPU (float32). ``quantize``: ``None``/``"none"`` or ``"int8"`` (opt-in weight-only int8 of the talker and
        predictor linear layers, see ``qtts.quant``; the summary is kept in ``tts.quantization``). ``accel``: an
        ``--accel`` value (``"auto"``: CUDA graphs, fused projections and the codec on its own stream on CUDA,
        eager on CPU; see ``qtts.accel.parse_accel``) or ``AccelOptions``; None: eager (the reference path;
        ``accelerate`` can switch later)."""
        quant = parse_quantize(quantize)
        if accel is not None and not isinstance(accel, (str, AccelOptions)):
            raise InputError(f"accel must be an --accel string or AccelOptions, got {type(accel).__name__}")
        folder = resolve_checkpoint(path_or_id)
        dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        options = parse_accel(accel, dev) if isinstance(accel, str) else accel  # a bad value fails before loading
        if isinstance(dtype, str):
            dtype = _parse_dtype(dtype)
        dtype = dtype or _default_dtype(dev)
        cfg = ModelConfig.from_dict(read_json(folder / "config.json"), str(folder / "config.json"))
        gen_path = folder / "generation_config.json"
        generation = GenerationConfig.from_dict(read_json(gen_path), str(gen_path)) if gen_path.is_file() \
            else GenerationConfig()
        tokenizer = TextTokenizer.from_dir(folder)
        tensors, _ = read_safetensors(folder)
        model = build_and_load(lambda: TTSModel(cfg), tensors, str(folder / "model.safetensors"), dtype, dev)
        del tensors
        summary = quantize_int8_(model) if quant == "int8" else None
        st = folder / "speech_tokenizer"
        if not st.is_dir():
            raise CheckpointError(f"{folder}: the speech_tokenizer/ folder is missing")
        codec_cfg = SpeechTokenizerConfig.from_dict(read_json(st / "config.json"), str(st / "config.json"))
        codec_tensors, _ = read_safetensors(st)
        codec = build_and_load(lambda: SpeechTokenizer(codec_cfg), codec_tensors, str(st / "model.safetensors"),
                               dtype, dev)
        tts = cls(cfg, generation, tokenizer, model, codec)
        tts.quantization = summary
        if options is not None:
            tts.set_accel(options)
        return tts

    @property
    def kind(self) -> str:
        """``base`` (voice clone), ``custom_voice`` (preset speakers) or ``voice_design``."""
        return self.cfg.tts_model_type

    @property
    def sample_rate(self) -> int:
        return self.codec.cfg.output_sample_rate

    @property
    def speakers(self) -> list[str]:
        return self.prompts.speakers

    @property
    def languages(self) -> list[str]:
        return self.prompts.languages

    # ---- voices -----------------------------------------------------------------------------------

    @torch.no_grad()
    def create_clone_prompt(self, ref_audio: str | Path | tuple[np.ndarray, int], ref_text: str | None = None,
                            x_vector_only: bool = False) -> ClonePrompt:
        """Encode reference audio once into a reusable ``ClonePrompt`` (Base checkpoints only)."""
        from .audio import prepare_reference

        if self.model.speaker_encoder is None:
            raise UnsupportedModeError(f"voice cloning needs a Base checkpoint; this one is {self.kind!r}")
        if not x_vector_only:
            self.prompts.text_ids(ref_text or "", "reference text")
        wav = prepare_reference(ref_audio, self.codec.cfg.input_sample_rate)
        x = torch.from_numpy(wav)[None].to(self.device)
        embedding = self.model.speaker_encoder.embed(x)[0].float().cpu()
        codes = None if x_vector_only else self.codec.encode(x.to(self.dtype))[0].T.cpu()
        return ClonePrompt(embedding, codes, None if x_vector_only else ref_text.strip())

    def _voice_spec(self, voice: Voice | None, instruct: str | None
                    ) -> tuple[VoiceSpec, torch.Tensor | None, torch.Tensor | None]:
        """VoiceSpec, speaker vector and reference codes for ``voice``."""
        if voice is None:
            if self.kind == "custom_voice":
                voice = Speaker(DEFAULT_SPEAKER if DEFAULT_SPEAKER in self.speakers else self.speakers[0])
            elif self.kind == "voice_design" and instruct:
                voice, instruct = Design(instruct), None
            else:
                what = "voice=Clone(ref_audio, ref_text)" if self.kind == "base" else "voice=Design(description)"
                raise InputError(f"this {self.kind} checkpoint needs a voice: {what}")
        if isinstance(voice, Speaker):
            ins = instruct if instruct is not None else voice.instruct
            if ins and self.cfg.tts_model_size == "0b6":
                warnings.warn("0.6B CustomVoice checkpoints ignore instructions (as the official package does)",
                              stacklevel=3)
                ins = None
            spec = VoiceSpec(speaker=voice.name, instruct=ins or None)
            check_mode(self.cfg, spec)
            return spec, None, None
        if isinstance(voice, Design):
            if not isinstance(voice.description, str) or not voice.description.strip():
                raise InputError("Design needs a non-empty voice description")
            spec = VoiceSpec(instruct=voice.description)
            check_mode(self.cfg, spec)
            return spec, None, None
        if isinstance(voice, Clone):
            if self.kind != "base":
                raise UnsupportedModeError(f"voice cloning needs a Base checkpoint; this one is {self.kind!r}")
            if instruct:
                raise UnsupportedModeError("Base checkpoints take no instruction; use CustomVoice or VoiceDesign")
            prompt = voice.prompt or self.create_clone_prompt(voice.ref_audio, voice.ref_text, voice.x_vector_only)
            if prompt.speaker_embedding.shape != (self.cfg.talker.hidden_size,):
                raise InputError(f"clone prompt embedding has shape {tuple(prompt.speaker_embedding.shape)}, "
                                 f"this checkpoint needs ({self.cfg.talker.hidden_size},)")
            frames = 0 if prompt.ref_codes is None else prompt.ref_codes.shape[0]
            spec = VoiceSpec(speaker_vector=True, ref_text=prompt.ref_text, ref_frames=frames)
            return spec, prompt.speaker_embedding, prompt.ref_codes
        raise InputError(f"voice must be Speaker, Design or Clone, got {type(voice).__name__}")

    # ---- synthesis --------------------------------------------------------------------------------

    def prepare(self, text: str, voice: Voice | None = None, language: str = "auto", instruct: str | None = None,
                seed: int | None = None, options: SynthesisOptions | None = None) -> Prepared:
        """Validate a request and build its model inputs (prompt vectors, text vectors, sampling)."""
        opts = options or SynthesisOptions()
        spec, speaker_vector, ref_codes = self._voice_spec(voice, instruct)
        non_streaming = opts.non_streaming_mode
        if non_streaming is None:
            non_streaming = not spec.speaker_vector  # official defaults: clone False, others True
        plan = self.prompts.build(text, language, spec, non_streaming)
        params = (opts.sampling or Sampling()).resolve(self.generation, seed)
        budget = opts.max_new_tokens
        if budget is None:
            budget = frame_budget(plan.text_tokens, self.generation.max_new_tokens)
        elif not isinstance(budget, int) or budget < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {budget!r}")
        prompt, trailing = embed_plan(self.model.talker, plan, speaker_vector, ref_codes)
        return Prepared(plan, StreamInput(prompt, trailing, params, budget), ref_codes)

    def prepare_session(self, voice: Voice | None = None, language: str = "auto", instruct: str | None = None,
                        seed: int | None = None, options: SynthesisOptions | None = None) -> PreparedSession:
        """Validate a text-in session (voice, language, sampling) and set up its text feed. The session uses
        the streaming text layout (one text token per frame); ``options.non_streaming_mode`` must not be True."""
        opts = options or SynthesisOptions()
        if opts.non_streaming_mode:
            raise InputError("text-in sessions use the streaming text layout; non_streaming_mode must be False")
        if opts.max_new_tokens is not None and (not isinstance(opts.max_new_tokens, int) or opts.max_new_tokens < 1):
            raise InputError(f"max_new_tokens must be a positive integer, got {opts.max_new_tokens!r}")
        spec, speaker_vector, ref_codes = self._voice_spec(voice, instruct)
        self.prompts.language_id(language, spec.speaker.lower() if spec.speaker else None)
        params = (opts.sampling or Sampling()).resolve(self.generation, seed)
        talker = self.model.talker

        def build(tokens: list[int], complete: bool) -> tuple[torch.Tensor, torch.Tensor]:
            plan = self.prompts.build_ids(tokens, language, spec, False, complete)
            return embed_plan(talker, plan, speaker_vector, ref_codes)

        def embed(tokens: list[int]) -> torch.Tensor:
            with torch.no_grad():
                return talker.embed_text(torch.tensor(tokens, dtype=torch.long, device=self.device))

        feed = TextFeed(self.prompts.tok, self.prompts.max_text_tokens)
        text = SessionText(feed, build, embed, embed([self.cfg.tts_eos_token_id]), self.prompts.prefill_tokens(spec),
                           opts.max_new_tokens, self.generation.max_new_tokens)
        return PreparedSession(text, params, ref_codes)

    def tts_pad(self) -> torch.Tensor:
        """The text-track vector fed once the text is exhausted, ``[H]``."""
        with torch.no_grad():
            ids = torch.tensor([self.cfg.tts_pad_token_id], device=self.device)
            return self.model.talker.embed_text(ids)[0]

    def synthesize(self, text: str, voice: Voice | None = None, language: str = "auto", instruct: str | None = None,
                   seed: int | None = None, options: SynthesisOptions | None = None) -> Synthesis:
        """Synthesize ``text`` with ``voice`` (``Speaker`` / ``Design`` / ``Clone``; CustomVoice defaults to
        ``vivian``). ``language``: ``auto`` or a name from ``languages``. ``seed`` fixes the sampling."""
        return self.synthesize_batch([text], voice, language, instruct, seed, options)[0]

    def synthesize_batch(self, texts: Sequence[str], voice: Voice | Sequence[Voice] | None = None,
                         language: str | Sequence[str] = "auto", instruct: str | None = None,
                         seed: int | Sequence[int] | None = None, options: SynthesisOptions | None = None,
                         ) -> list[Synthesis]:
        """Synthesize several texts as one batch (same results as one at a time for the same seeds).
        Scalars are broadcast; ``seed`` as an int gives stream ``i`` the seed ``seed + i``."""
        if isinstance(texts, str) or not texts:
            raise InputError("texts must be a non-empty list of strings")
        n = len(texts)
        voices = _broadcast(voice, n, "voice", (Speaker, Design, Clone, type(None)))
        languages = _broadcast(language, n, "language", (str,))
        if isinstance(seed, int):
            seeds = [seed + i for i in range(n)]
        else:
            seeds = _broadcast(seed, n, "seed", (int, type(None)))
        prepared = [self.prepare(t, v, lang, instruct, s, options)
                    for t, v, lang, s in zip(texts, voices, languages, seeds, strict=True)]
        on_frame = options.on_frame if options else None
        runner = self.take_runner(len(prepared))
        try:
            outs = generate_codes(runner, [p.stream for p in prepared], on_frame)
        finally:
            self.give_runner(runner)
        return [Synthesis(self.decode(o.codes, p.ref_codes), self.sample_rate, o.codes, o.finish_reason)
                for o, p in zip(outs, prepared, strict=True)]

    def stream(self, text: str, voice: Voice | None = None, language: str = "auto", instruct: str | None = None,
               seed: int | None = None, options: SynthesisOptions | None = None) -> Iterator[AudioChunk]:
        """Like ``synthesize`` but yields ``AudioChunk`` s as frames are generated (first after one frame,
        then 2, 4, 8, ... frames; see ``SynthesisOptions.chunks``). Joined chunks equal ``synthesize``'s audio
        for the same seed. Closing the iterator cancels generation."""
        started = time.perf_counter()
        prepared = self.prepare(text, voice, language, instruct, seed, options)
        opts = options or SynthesisOptions()
        tick = None if opts.on_frame is None else (lambda: opts.on_frame(0))
        return run_job(self, prepared.job(lambda _item: None, opts.chunks, started, tick))

    def open_stream(self, voice: Voice | None = None, language: str = "auto", instruct: str | None = None,
                    seed: int | None = None, options: SynthesisOptions | None = None) -> StreamSession:
        """A text-in, audio-out session: ``push_text`` pieces of text (e.g. LLM tokens) from any thread,
        ``end()`` when the text is complete, and iterate ``AudioChunk`` s (sync or async) meanwhile. Audio starts
        as soon as the first words are final; generation waits for text rather than padding. With the whole text
        pushed at once the audio equals ``stream(text, ...)`` with ``non_streaming_mode=False``."""
        started = time.perf_counter()
        session = self.prepare_session(voice, language, instruct, seed, options)
        opts = options or SynthesisOptions()
        tick = None if opts.on_frame is None else (lambda: opts.on_frame(0))
        job = session.job(lambda _item: None, opts.chunks, started, tick)
        return StreamSession(session.feed, job, lambda: run_job(self, job))

    async def astream(self, text: str, voice: Voice | None = None, language: str = "auto",
                      instruct: str | None = None, seed: int | None = None,
                      options: SynthesisOptions | None = None) -> AsyncIterator[AudioChunk]:
        """Async version of ``stream``: model work runs in a worker thread, never on the event loop.
        Breaking out of the ``async for`` (or cancelling the task) stops generation."""
        chunks = await asyncio.to_thread(self.stream, text, voice, language, instruct, seed, options)
        try:
            async for chunk in iterate_in_thread(chunks):
                yield chunk
        finally:
            chunks.close()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, ref_codes: torch.Tensor | None = None) -> np.ndarray:
        """Codes ``[T, 16]`` -> float32 audio ``[1920 * T]``. With ``ref_codes [T_ref, 16]`` (ICL clone) the
        reference frames are decoded first as context and their audio dropped."""
        n_ref = 0 if ref_codes is None else ref_codes.shape[0]
        if codes.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        full = codes if ref_codes is None else torch.cat([ref_codes.to(codes.device), codes])
        pcm = self.codec.decode(full.T[None].to(self.device))[0, 0]
        return pcm[n_ref * self.codec.samples_per_frame:].float().cpu().numpy()


@dataclasses.dataclass(frozen=True)
class SynthesisOptions:
    """Less common synthesis options.

    ``sampling``: overrides of the checkpoint's sampling defaults (``Sampling.greedy()`` for determinism);
    ``max_new_tokens``: frame budget (default: ``request.frame_budget`` of the text length);
    ``non_streaming_mode``: text layout (default: True for CustomVoice/VoiceDesign, False for clones, as the
    official package); ``on_frame``: progress callback, called with the stream index per generated frame;
    ``chunks``: frames per streamed audio chunk (``stream`` only).
    """

    sampling: Sampling | None = None
    max_new_tokens: int | None = None
    non_streaming_mode: bool | None = None
    on_frame: Callable[[int], None] | None = None
    chunks: ChunkPolicy | None = None


def _broadcast(value: object, n: int, name: str, types: tuple[type, ...]) -> list:
    if isinstance(value, types):
        return [value] * n
    if isinstance(value, (list, tuple)) and len(value) == n and all(isinstance(v, types) for v in value):
        return list(value)
    raise InputError(f"{name} must be one value or a list of {n} values")


def _parse_dtype(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise InputError(f"unknown dtype {name!r}; valid: {', '.join(table)}")
    return table[name]
