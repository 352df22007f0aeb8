"""Captioner serving around two engines: validate and decode an image, batch encoder runs, batch decoder
steps of concurrent requests, beam search in numpy. No gRPC and no torch, so the server and the in-process
`nui caption` share it:

    model = load_captioner_version(repo, "captioner", 1)
    served = ServedCaptioner.create(model, CaptionBatching())       # inside a running event loop
    job = model.prepare(png_bytes, CaptionOptions(beam_size=3, n_best=2), ImageLimits(), "id-1")
    result = await served.caption(job)                              # CaptionResult, n-best captions

Two dynamic batchers per model version (server/batcher.py):
- encoder: the images of concurrent requests run as one batch (waiting up to `max_queue_delay_ms`);
- decoder step: every request's live beam rows (tokens, GRU state, image memory) join whatever step
  batch is forming; by default it waits for nobody (`step_queue_delay_ms` 0) and takes every step that
  is queued when the previous batch finishes, so requests in flight together step together and a lone
  request never waits. Each request keeps its own `models.caption_beam.BeamSearch`.
A request whose image is bad fails in `prepare`, before any queue; a failing step fails only its own
request (the batcher re-runs items one by one when a batch raises).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engines.engine import Engine, load_engine
from engines.manifest import version_dir
from models.caption_beam import BeamSearch, Hypothesis, SearchOptions
from models.caption_domain import DomainVerdict
from models.caption_image import to_pixels
from models.caption_text import BOS, EOS, PAD, UNK, CaptionTokenizer, manifest_end_ids
from server.batcher import BatchObserver, DynamicBatcher
from server.caption_domain import DomainCheck, fallback_log_prob
from server.errors import invalid_argument, out_of_range

logger = logging.getLogger(__name__)

TASK = "captioner"
DEFAULT_MODEL = "captioner"
FORMATS = ("JPEG", "PNG", "WEBP")
MAX_BEAM_SIZE = 16
MAX_LENGTH_PENALTY = 2.0
DEFAULT_BEAM_SIZE = 3
BANNED_IDS = (PAD, BOS, UNK)  # a caption is words and EOS

ObserverFor = Callable[[str, int], BatchObserver]  # (model label, version) -> batch observer (metrics)


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000  # width x height; below Pillow's decompression-bomb guard (~89 M)

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise ValueError(f"image limits must be positive, got {self}")


@dataclass(frozen=True)
class CaptionOptions:
    """As the request gives them; 0 means the default (see proto/caption.proto)."""

    beam_size: int = 0
    n_best: int = 0
    max_length: int = 0
    length_penalty: float = 0.0


@dataclass(frozen=True, eq=False)
class ImageJob:
    """One validated request, ready for the encoder batch."""

    pixels: np.ndarray  # (3, H, W) float32 in [0, 1] at the model's size
    width: int  # of the image as received
    height: int
    search: SearchOptions
    request_id: str
    decode_image_s: float


@dataclass(frozen=True)
class CaptionText:
    text: str
    score: float
    log_prob: float
    finished: bool


@dataclass(frozen=True)
class CaptionResult:
    captions: tuple[CaptionText, ...]  # best first, at least one
    width: int
    height: int
    decode_image_s: float
    encoder_s: float
    decoder_s: float
    decoder_steps: int
    domain: DomainVerdict | None = None  # the out-of-domain check's verdict; None: the version has none


@dataclass(frozen=True, eq=False)
class StepRows:
    """One request's live beam rows for one decoder step."""

    tokens: np.ndarray  # (r,) int64
    state: dict[str, np.ndarray]  # "state" (r, S), "memory" (r, N, D), "keys" (r, N, A)


def decode_image(data: bytes, limits: ImageLimits, min_side_px: int | None = None) -> tuple[Image.Image, int, int]:
    """(the first frame of a JPEG/PNG/WebP with EXIF orientation applied, width, height as received);
    RequestError naming `image` when it is empty, too large (bytes or pixels), zero-size, of another
    format, or undecodable.

    min_side_px: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (DCT scaling, Pillow's `draft`) as long as
    both sides stay >= min_side_px; with twice the model's input side the resized pixels differ by ~0.1%
    of full scale on average from a full decode, and a large photo decodes several times faster."""
    if not data:
        raise invalid_argument("image is empty; send the bytes of a JPEG, PNG or WebP file")
    if len(data) > limits.max_bytes:
        raise invalid_argument(f"image is {len(data)} bytes; at most {limits.max_bytes} are allowed")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = im.size
            if width < 1 or height < 1:
                raise invalid_argument(f"image is {width}x{height} pixels; it must be at least 1x1")
            if width * height > limits.max_pixels:
                raise invalid_argument(f"image is {width}x{height} = {width * height} pixels; at most "
                                       f"{limits.max_pixels} are allowed")
            if min_side_px is not None and im.format == "JPEG":
                im.draft(None, (min_side_px, min_side_px))
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # Pillow's own guard, at open
        raise invalid_argument(f"image has more than {limits.max_pixels} pixels ({e})") from e
    except UnidentifiedImageError as e:
        raise invalid_argument(f"image is not a {', '.join(FORMATS)} image (cannot identify its format)") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated or corrupt data, bad header fields
        raise invalid_argument(f"image could not be decoded: {e}") from e
    return ImageOps.exif_transpose(im), width, height


class CaptionerModel:
    """A loaded captioner version: its two engines, tokenizer and input spec."""

    def __init__(self, encoder: Engine, decoder: Engine, tokenizer: CaptionTokenizer) -> None:
        manifest = encoder.manifest
        where = f"{encoder.name} version {encoder.version}"
        if manifest.task != TASK:
            raise ValueError(f"{where}: manifest task is {manifest.task!r}, not {TASK!r}")
        try:
            self.image_size_px = int(manifest.config["image_size_px"])
            self.max_len = int(manifest.config["max_len"])
            vocab_size = int(manifest.config["vocab_size"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: manifest config lacks or mangles {e}") from e
        if tokenizer.vocab_size != vocab_size:
            raise ValueError(f"{where}: tokenizer has {tokenizer.vocab_size} tokens, the model {vocab_size}")
        tokens = manifest.extras.get("tokens", {})
        if tokens != {"pad": PAD, "bos": BOS, "eos": EOS, "unk": UNK}:
            raise ValueError(f"{where}: manifest special tokens {tokens} differ from this server's")
        try:
            self.end_after_ids = manifest_end_ids(manifest.extras, vocab_size)  # None: a caption ends anywhere
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e
        self.encoder, self.decoder, self.tokenizer = encoder, decoder, tokenizer
        self.domain = DomainCheck.from_manifest(manifest)  # server/caption_domain.py

    @property
    def name(self) -> str:
        return self.encoder.name

    @property
    def version(self) -> int:
        return self.encoder.version

    @property
    def engine(self) -> Engine:
        """The encoder: its manifest is the version's (what KServe ModelMetadata and metrics read)."""
        return self.encoder

    @property
    def max_length(self) -> int:
        """Most tokens a caption may have, EOS included (BOS is given, not generated)."""
        return self.max_len - 1

    def search_options(self, options: CaptionOptions) -> SearchOptions:
        """The request's options with defaults filled in; RequestError OUT_OF_RANGE naming the field."""
        beam = options.beam_size or DEFAULT_BEAM_SIZE
        if not 1 <= beam <= MAX_BEAM_SIZE:
            raise out_of_range(f"config.beam_size is {options.beam_size}; allowed: 1..{MAX_BEAM_SIZE} (0: "
                               f"{DEFAULT_BEAM_SIZE})")
        n_best = options.n_best or 1
        if not 1 <= n_best <= beam:
            raise out_of_range(f"config.n_best is {options.n_best}; allowed: 1..beam_size ({beam})")
        max_length = options.max_length or self.max_length
        if not 1 <= max_length <= self.max_length:
            raise out_of_range(f"config.max_length is {options.max_length}; allowed: 1..{self.max_length} "
                               "(0: the model's limit)")
        if not 0.0 <= options.length_penalty <= MAX_LENGTH_PENALTY:  # also refuses NaN
            raise out_of_range(f"config.length_penalty is {options.length_penalty:g}; allowed: "
                               f"0..{MAX_LENGTH_PENALTY:g}")
        return SearchOptions(beam_size=beam, max_length=max_length, n_best=n_best,
                             length_penalty=options.length_penalty, banned_ids=BANNED_IDS,
                             end_after_ids=self.end_after_ids)

    def prepare(self, image: bytes, options: CaptionOptions, limits: ImageLimits, request_id: str) -> ImageJob:
        """Validate the options and decode the image (raises RequestError naming the field)."""
        started = time.monotonic()
        search = self.search_options(options)
        im, width, height = decode_image(image, limits, min_side_px=2 * self.image_size_px)
        pixels = to_pixels(im, self.image_size_px)
        return ImageJob(pixels, width, height, search, request_id, time.monotonic() - started)

    def run_encoder(self, jobs: list[ImageJob]) -> list[dict[str, np.ndarray] | Exception]:
        """One encoder run for the batch: each job's features {"memory", "keys", "state"}, one row each."""
        out = self.encoder.run({"images": np.stack([j.pixels for j in jobs])})
        if any(v.shape[0] != len(jobs) for v in out.values()):
            raise RuntimeError(f"encoder returned {[v.shape for v in out.values()]} for a batch of {len(jobs)}")
        return [{k: v[i:i + 1] for k, v in out.items()} for i in range(len(jobs))]

    def run_steps(self, items: list[StepRows]) -> list[tuple[np.ndarray, dict[str, np.ndarray]] | Exception]:
        """One decoder-step run over every request's rows: each gets (log_probs (r, V), new state)."""
        counts = [len(it.tokens) for it in items]
        inputs = {"tokens": np.concatenate([it.tokens for it in items])}
        for key in ("state", "memory", "keys"):
            inputs[key] = np.concatenate([it.state[key] for it in items])
        out = self.decoder.run(inputs)
        log_probs, new_state = out["log_probs"], out["state_out"]
        if log_probs.shape[0] != sum(counts) or new_state.shape[0] != sum(counts):
            raise RuntimeError(f"decoder step returned {log_probs.shape}, {new_state.shape} for {sum(counts)} rows")
        results: list[tuple[np.ndarray, dict[str, np.ndarray]] | Exception] = []
        start = 0
        for it, n in zip(items, counts, strict=True):
            results.append((log_probs[start:start + n], {**it.state, "state": new_state[start:start + n]}))
            start += n
        return results

    def texts(self, hyps: list[Hypothesis]) -> tuple[CaptionText, ...]:
        return tuple(CaptionText(self.tokenizer.decode(h.tokens), h.score, h.log_prob, h.finished) for h in hyps)


@dataclass(frozen=True)
class CaptionBatching:
    max_batch_size: int = 16  # images per encoder run; requests per decoder-step run
    max_queue_delay_ms: float = 5.0  # encoder batches wait this long for more images
    step_queue_delay_ms: float = 0.0  # decoder steps: 0 = run whatever is queued, wait for nobody
    max_queue_size: int = 256


class ServedCaptioner:
    """A model with its encoder and decoder-step batchers; `caption` runs one request through both."""

    def __init__(self, model: CaptionerModel, encoder: DynamicBatcher[ImageJob, dict[str, np.ndarray]],
                 steps: DynamicBatcher[StepRows, tuple[np.ndarray, dict[str, np.ndarray]]]) -> None:
        self.model, self.encoder, self.steps = model, encoder, steps

    @property
    def batcher(self) -> DynamicBatcher[ImageJob, dict[str, np.ndarray]]:
        """The encoder's: one item per request (KServe ModelStatistics counts requests with it)."""
        return self.encoder

    @classmethod
    def create(cls, model: CaptionerModel, settings: CaptionBatching,
               observer_for: ObserverFor | None = None) -> ServedCaptioner:
        """Create inside the running event loop; `observer_for(model, version)` -> BatchObserver (metrics)."""
        name = f"{model.name}-v{model.version}"

        def observer(graph: str) -> BatchObserver | None:
            return observer_for(f"{model.name}/{graph}", model.version) if observer_for is not None else None

        encoder: DynamicBatcher[ImageJob, dict[str, np.ndarray]] = DynamicBatcher(
            model.run_encoder, settings.max_batch_size, settings.max_queue_delay_ms, settings.max_queue_size,
            name=f"{name}-encoder", observer=observer("encoder"))
        steps: DynamicBatcher[StepRows, tuple[np.ndarray, dict[str, np.ndarray]]] = DynamicBatcher(
            model.run_steps, settings.max_batch_size, settings.step_queue_delay_ms, settings.max_queue_size,
            name=f"{name}-steps", observer=observer("decoder_step"))
        return cls(model, encoder, steps)

    async def caption(self, job: ImageJob, deadline: float | None = None, domain_check: bool = True
                      ) -> CaptionResult:
        """Encode (batched), then beam search with batched decoder steps; raises the batchers' errors.
        An image the version's domain check rejects is not decoded: it gets the fallback caption."""
        started = time.monotonic()
        features = await self.encoder.submit(job, deadline=deadline)
        encoded = time.monotonic()
        verdict = None
        if self.model.domain is not None:
            features, verdict = self.model.domain.split(features)
            if domain_check and not verdict.in_domain:
                lp = fallback_log_prob(verdict)
                return CaptionResult((CaptionText(verdict.caption, lp, lp, True),), job.width, job.height,
                                     job.decode_image_s, encoded - started, 0.0, 0, verdict)
        search = BeamSearch(features, 1, BOS, EOS, job.search)
        steps = 0
        while not search.done:
            tokens, state = search.inputs()
            log_probs, new_state = await self.steps.submit(StepRows(tokens, state), deadline=deadline)
            search.advance(log_probs, new_state)
            steps += 1
        captions = self.model.texts(search.results()[0])
        if not captions:
            raise RuntimeError("beam search returned no caption")
        return CaptionResult(captions, job.width, job.height, job.decode_image_s, encoded - started,
                             time.monotonic() - encoded, steps, verdict)

    async def warm_up(self) -> None:
        """One grey image through both graphs (first ONNX Runtime runs are slow)."""
        size = self.model.image_size_px
        job = ImageJob(np.full((3, size, size), 0.5, np.float32), size, size,
                       SearchOptions(beam_size=1, max_length=1), "warm-up", 0.0)
        await self.caption(job, domain_check=False)  # decode even when grey is out of domain

    async def close(self) -> None:
        await asyncio.gather(self.encoder.close(), self.steps.close())


def load_captioner_version(repo: Path, name: str, version: int, intra_op_threads: int | None = None,
                           provider: str = "cpu") -> CaptionerModel:
    """Both graphs and the tokenizer of one version, checksums verified; ValueError when anything is off."""
    encoder = load_engine(repo, name, version, intra_op_threads, graph="encoder", provider=provider)
    decoder = load_engine(repo, name, version, intra_op_threads, graph="decoder_step", verify=False,
                          provider=provider)
    folder = version_dir(Path(repo), name, version)
    tokenizer_file = encoder.manifest.extras.get("tokenizer")
    if not isinstance(tokenizer_file, str) or tokenizer_file not in encoder.manifest.files:
        raise ValueError(f"{folder}: manifest extras['tokenizer'] must name a file listed in its files")
    try:
        tokenizer = CaptionTokenizer.from_file(folder / tokenizer_file)
    except Exception as e:  # tokenizers raises its own exception types
        raise ValueError(f"{folder}: cannot load {tokenizer_file}: {e}") from e
    return CaptionerModel(encoder, decoder, tokenizer)
