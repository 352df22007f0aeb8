"""`nui listen`: transcribe the live microphone in the terminal, through a running server.

    nui listen --list-devices                          # input devices (PortAudio / ALSA)
    nui listen --server 127.0.0.1:50051 [--device 2 | --device "USB"] [--duration-s 30]

With a streaming speech model on the server the audio goes to StreamingRecognize as it is captured:
interim transcripts print as `~ text` lines (overwriting each other on a terminal), finals as plain
lines. Without one, the audio is cut at pauses (--pause-s of quiet after speech) and each utterance goes
to Recognize; its transcript prints as a final line. Ctrl-C (or --duration-s of audio) stops; what was
said so far is still transcribed. Exit status 0, or 1 with one `error:` line (no input device, unknown
device, server unreachable).
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from ui.audio import AudioProblem, loudest_frame_dbfs, prepare_audio
from ui.client import NuiClient, NuiError
from ui.live import LiveSession

PROG = "nui listen"
SPEECH_DBFS = -40.0  # a chunk louder than this is speech (segment mode)


class ListenError(Exception):
    pass


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as e:  # the Python package is there but not the PortAudio library
        raise ListenError(f"cannot load PortAudio ({e}); install libportaudio2 (bash scripts/setup.sh does)") from e
    return sounddevice


def input_devices() -> list[tuple[int, str, int]]:
    """(index, name, default sample rate) of every device with an input channel."""
    sd = _sounddevice()
    return [(i, d["name"], int(d["default_samplerate"])) for i, d in enumerate(sd.query_devices())
            if d["max_input_channels"] > 0]


def pick_device(choice: str | None) -> int | None:
    """The device index for --device (an index or part of a name); None: the system default."""
    devices = input_devices()
    if not devices:
        raise ListenError("no audio input device found: connect a microphone (or check ALSA with `arecord -l`)")
    if choice is None:
        return None
    if choice.isdigit():
        if int(choice) not in {i for i, _, _ in devices}:
            raise ListenError(f"--device {choice} is not an input device; inputs: "
                              + ", ".join(f"{i} ({n})" for i, n, _ in devices))
        return int(choice)
    matches = [i for i, n, _ in devices if choice.lower() in n.lower()]
    if len(matches) != 1:
        raise ListenError(f"--device {choice!r} matches {len(matches)} input devices; inputs: "
                          + ", ".join(f"{i} ({n})" for i, n, _ in devices))
    return matches[0]


def capture(device: int | None, sample_rate_hz: int, chunk_ms: float, duration_s: float) -> Iterator[np.ndarray]:
    """int16 mono chunks from the device until duration_s of audio (0: forever) or Ctrl-C."""
    sd = _sounddevice()
    chunks: queue.Queue[np.ndarray] = queue.Queue()

    def callback(data: np.ndarray, frames: int, time: object, status: object) -> None:
        chunks.put(data[:, 0].copy())

    block = int(sample_rate_hz * chunk_ms / 1000)
    try:
        stream = sd.InputStream(device=device, channels=1, samplerate=sample_rate_hz, dtype="int16",
                                blocksize=block, callback=callback)
    except sd.PortAudioError as e:
        raise ListenError(f"cannot open the input device: {e}") from e
    limit = int(duration_s * sample_rate_hz) if duration_s > 0 else None
    taken = 0
    with stream:
        try:
            while limit is None or taken < limit:
                chunk = chunks.get()
                if limit is not None:
                    chunk = chunk[: limit - taken]
                taken += len(chunk)
                yield chunk
        except KeyboardInterrupt:
            return


def stream_lines(client: NuiClient, chunks: Iterator[np.ndarray], sample_rate_hz: int) -> Iterator[tuple[bool, str]]:
    """(is_final, text) as StreamingRecognize answers while the chunks are captured."""
    session = LiveSession(client, sample_rate_hz, streaming=True)
    shown_finals, shown = 0, ""
    for chunk in chunks:
        session.feed(chunk)
        while shown_finals < len(session.finals):
            yield True, session.finals[shown_finals]
            shown_finals += 1
        if session.current and session.current != shown:
            shown = session.current
            yield False, shown
    with contextlib.suppress(AudioProblem):  # nothing but silence: nothing to print
        session.finish()
    for text in session.finals[shown_finals:]:
        yield True, text


def segment_lines(client: NuiClient, chunks: Iterator[np.ndarray], sample_rate_hz: int, pause_s: float
                  ) -> Iterator[tuple[bool, str]]:
    """(True, text) per utterance: audio cut after `pause_s` of quiet following speech, sent to Recognize."""
    utterance: list[np.ndarray] = []
    quiet_s = 0.0

    def flush() -> Iterator[tuple[bool, str]]:
        try:
            clip = prepare_audio((sample_rate_hz, np.concatenate(utterance)))
        except AudioProblem:
            return
        text = client.recognize(clip.wav).text
        if text:
            yield True, text

    for chunk in chunks:
        loud = loudest_frame_dbfs(chunk.astype(np.float32) / 32768, sample_rate_hz) > SPEECH_DBFS
        if loud or utterance:
            utterance.append(chunk)
        quiet_s = 0.0 if loud else quiet_s + len(chunk) / sample_rate_hz
        if utterance and quiet_s >= pause_s:
            yield from flush()
            utterance, quiet_s = [], 0.0
    if utterance:
        yield from flush()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Transcribe the microphone live through a nui server.")
    p.add_argument("--server", default="127.0.0.1:50051", metavar="HOST:PORT")
    p.add_argument("--device", default=None, help="input device: index or part of its name (default: system's)")
    p.add_argument("--list-devices", action="store_true", help="print the input devices and exit")
    p.add_argument("--sample-rate", type=int, default=16000, help="capture rate in Hz (default %(default)s)")
    p.add_argument("--chunk-ms", type=float, default=100.0)
    p.add_argument("--duration-s", type=float, default=0.0, help="stop after this much audio (0: at Ctrl-C)")
    p.add_argument("--pause-s", type=float, default=0.6, help="quiet that ends an utterance without streaming")
    p.add_argument("--no-stream", action="store_true", help="use Recognize per utterance even if streaming exists")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.list_devices:
            devices = input_devices()
            for i, name, rate in devices:
                print(f"{i:3d}  {name}  ({rate} Hz)")
            if not devices:
                raise ListenError("no audio input device found")
            return 0
        device = pick_device(args.device)
        with NuiClient(args.server) as client:
            client.wait_ready(10.0)
            streaming = not args.no_stream and client.has_streaming()
            print(f"listening ({'streaming' if streaming else 'utterance by utterance'}); Ctrl-C stops",
                  file=sys.stderr, flush=True)
            chunks = capture(device, args.sample_rate, args.chunk_ms, args.duration_s)
            lines = stream_lines(client, chunks, args.sample_rate) if streaming else \
                segment_lines(client, chunks, args.sample_rate, args.pause_s)
            tty = sys.stdout.isatty()
            for final, text in lines:
                if final:
                    print(f"\r\033[K{text}" if tty else text, flush=True)
                elif tty:
                    print(f"\r\033[K~ {text}", end="", flush=True)
                else:
                    print(f"~ {text}", flush=True)
    except (ListenError, NuiError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
