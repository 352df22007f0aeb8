"""Tests of the synthetic speech corpus builder: text, voices, synthesis, augmentation, manifests,
the LibriSpeech importer and a tiny end-to-end ``nui data speech`` run (well under a minute on 2 cores)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from models.ctc_text import normalize_text
from training.speech_ctc import corpus, librispeech, synth
from training.speech_ctc.manifest import Utterance, load_audio, read_manifest, write_manifest
from training.speech_ctc.text import (
    Prompt,
    build_prompts,
    build_sentences,
    fortune_sentences,
    hold_out,
    number_words,
    ordinal_words,
    year_words,
)

SR = synth.SAMPLE_RATE_HZ


def needs(binary: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(binary) is None, reason=f"{binary} is not installed")


# ---------------------------------------------------------------------------------------------- text

def test_number_words() -> None:
    assert number_words(342) == "three hundred forty two"
    assert number_words(342, british_and=True) == "three hundred and forty two"
    assert number_words(12_005, british_and=True) == "twelve thousand and five"
    assert ordinal_words(23) == "twenty third"
    assert ordinal_words(40) == "fortieth"
    assert year_words(1984) == "nineteen eighty four"
    assert year_words(2005) == "two thousand and five"
    assert year_words(1905) == "nineteen oh five"


def test_build_prompts_deterministic_distinct_and_normalized() -> None:
    prompts = build_prompts(400, seed=7)
    assert prompts == build_prompts(400, seed=7)
    assert [p.text for p in prompts] != [p.text for p in build_prompts(400, seed=8)]
    texts = [p.text for p in prompts]
    assert len(set(texts)) == 400
    for p in prompts:
        assert p.text == normalize_text(p.spoken) and 3 <= len(p.text.split()) <= 20
        assert p.spoken[0].isupper() and p.spoken[-1] in ".?!"
    assert {p.source for p in prompts} >= {"grammar", "dictionary"}
    assert build_sentences(50, seed=3) == [p.text for p in build_prompts(50, seed=3)]
    # Regression value: the same seed must keep giving the same corpus text.
    assert [p.text for p in build_prompts(3, seed=0, fortune_fraction=0, dictionary_fraction=0)] == [
        "a simple squirrel playing", "there's a shiny window in the kids room",
        "a tiny yellow butterfly resting in the sand"]


def test_fortunes_filtered_to_speakable_sentences(tmp_path: Path) -> None:
    (tmp_path / "jokes").write_text(
        "The early bird gets the worm.  Mr. Smith left at 5 o'clock.\n"
        "\t\t-- Somebody Famous\n%\n"
        "NASA has landed.  Never trust a cat that smiles at you.\n%\n"
        "Q:\tWhy did the chicken cross the road?\nA:\tTo get to the other side.\n",
        encoding="latin-1")
    (tmp_path / "jokes.dat").write_bytes(b"\0\1binary index")
    prompts = fortune_sentences(tmp_path)
    assert [p.spoken for p in prompts] == [
        "The early bird gets the worm.", "Never trust a cat that smiles at you.",
        "Why did the chicken cross the road?", "To get to the other side.",
    ]
    assert all(p.source == "fortune" and p.text == normalize_text(p.spoken) for p in prompts)
    if (Path("/usr/share/games/fortunes") / "fortunes").is_file():
        assert len(fortune_sentences()) > 200


def test_hold_out_is_disjoint_and_order_free() -> None:
    prompts = build_prompts(300, seed=1)
    split = hold_out(prompts, dev_fraction=0.1, test_fraction=0.1, seed=1)
    train, dev, test = ({p.text for p in part} for part in (split.train, split.dev, split.test))
    assert len(dev) == 30 and len(test) == 30 and len(train) == 240
    assert not (train & dev) and not (train & test) and not (dev & test)
    shuffled = hold_out(list(reversed(prompts)), dev_fraction=0.1, test_fraction=0.1, seed=1)
    assert {p.text for p in shuffled.test} == test
    with pytest.raises(ValueError):
        hold_out(prompts, dev_fraction=0.6, test_fraction=0.5, seed=1)


# -------------------------------------------------------------------------------------------- voices

def test_default_voice_split_holds_out_voices_and_speakers() -> None:
    splits = corpus.split_voices(synth.all_voices(), corpus.DEFAULT_DEV_VOICES, corpus.DEFAULT_TEST_VOICES)
    ids = {s: {v.id for v in vs} for s, vs in splits.items()}
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["dev"])
    assert not (ids["dev"] & ids["test"])
    assert sum(len(v) for v in ids.values()) == len(synth.all_voices())
    assert {"flite-awb", "festival-ked_diphone", "espeak-en-029", "espeak-en-us+f4"} <= ids["test"]
    assert {"flite-rms", "espeak-en-gb-x-gbcwmd+m1", "espeak-en-us+f2"} <= ids["dev"]
    assert {"espeak-en-us", "flite-slt", "flite-kal", "festival-kal_diphone"} <= ids["train"]
    for engine in ("espeak", "flite", "festival"):
        assert any(v.engine == engine for v in splits["test"]), engine
    speakers = {s: {v.speaker for v in vs} for s, vs in splits.items()}
    assert not (speakers["train"] & speakers["test"]) and not (speakers["train"] & speakers["dev"])
    assert not any(v.name.startswith("mb-") for v in synth.all_voices())


def test_plan_and_sentence_assignment() -> None:
    ids = ("espeak-en-us", "espeak-en-gb", "flite-slt", "festival-kal_diphone")
    voices = [synth.get_voice(v) for v in ids]
    plan = corpus.plan_clips(voices, 11, {"espeak": 0.5, "flite": 0.3, "festival": 0.2}, seed=0)
    assert sum(n for _, n in plan) == 11
    per_engine = {e: sum(n for v, n in plan if v.engine == e) for e in ("espeak", "flite", "festival")}
    assert per_engine == {"espeak": 6, "flite": 3, "festival": 2}
    prompts = build_prompts(5, seed=0)
    pairs = corpus.assign_sentences(plan, prompts, seed=0)
    for voice, _ in plan:
        said = [p.text for v, p in pairs if v == voice]
        assert len(said) == len(set(said))  # a voice never repeats a sentence
    assert {p.text for _, p in pairs} == {p.text for p in prompts}  # all used before any reuse
    with pytest.raises(ValueError, match="did you mean"):
        synth.get_voice("espeak-en-us+f9")


# ----------------------------------------------------------------------------------------- synthesis

@pytest.mark.parametrize("voice_id", [
    pytest.param("espeak-en-us+f3", marks=needs("espeak-ng")),
    pytest.param("espeak-en-gb-scotland+klatt", marks=needs("espeak-ng")),
    pytest.param("flite-kal", marks=needs("flite")),  # 8 kHz voice, resampled
    pytest.param("flite-slt", marks=needs("flite")),
    pytest.param("festival-kal_diphone", marks=needs("festival")),
])
def test_synthesize_each_engine(voice_id: str, tmp_path: Path) -> None:
    voice = synth.get_voice(voice_id)
    prosody = synth.random_prosody(voice, np.random.default_rng(0))
    audio = synth.synthesize(voice, "Turn on the kitchen lights, please.", prosody)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.8 < audio.size / SR < 6.0
    assert np.sqrt(np.mean(audio**2)) > 0.01  # not silent
    clip = synth.normalize_peak(synth.trim_silence(audio))
    path = tmp_path / "clip.wav"
    synth.write_wav(path, clip)
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")


@needs("festival")
def test_festival_batch_matches_single_calls_and_isolates_failures() -> None:
    voice = synth.get_voice("festival-kal_diphone")
    texts = ["Call my sister.", "What is the capital of Peru?"]
    prosodies = [synth.Prosody(rate=0.9), synth.Prosody(rate=1.1)]
    batch = synth.synthesize_many(voice, texts, prosodies)
    for text, prosody, audio in zip(texts, prosodies, batch, strict=True):
        assert isinstance(audio, np.ndarray)
        assert np.array_equal(audio, synth.synthesize(voice, text, prosody))
    slow, fast = (synth.synthesize(voice, texts[0], synth.Prosody(rate=r)) for r in (0.8, 1.25))
    assert slow.size > 1.3 * fast.size  # the rate reaches festival as Duration_Stretch
    broken = synth.Voice(id="festival-nobody", engine="festival", name="nobody_diphone", speaker="nobody")
    results = synth.synthesize_many(broken, texts, prosodies)
    assert all(isinstance(r, synth.SynthesisError) and "festival-nobody" in str(r) for r in results)


def test_synthesize_rejects_unsafe_text_and_missing_voices() -> None:
    with pytest.raises(ValueError, match="characters"):
        synth.synthesize(synth.get_voice("espeak-en-us"), "$(rm -rf ~) costs $5")
    missing = synth.Voice(id="espeak-mb-us1", engine="espeak", name="mb-us1", speaker="us1")
    if shutil.which("espeak-ng"):
        with pytest.raises(synth.SynthesisError, match="espeak-mb-us1"):
            synth.synthesize(missing, "Hello there friend.")
        assert synth.check_voice(missing) is not None
    nothing = synth.Voice(id="x-none", engine="nonexistent-tts-binary", name="x", speaker="x")
    with pytest.raises(synth.SynthesisError, match="not on PATH"):
        synth.synthesize(nothing, "Hello there friend.")


# -------------------------------------------------------------------------------------- augmentation

def _voiced(seconds: float = 1.5, f0_hz: float = 150.0) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * f0_hz * k * t) / k for k in range(1, 6))
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def _peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / SR)[np.argmax(spectrum)])


def test_augment_is_deterministic_and_sane() -> None:
    x = _voiced()
    for seed in range(12):
        y, params = synth.augment(x, seed)
        y2, params2 = synth.augment(x, seed)
        assert params == params2 and np.array_equal(y, y2)
        assert y.dtype == np.float32 and np.all(np.isfinite(y))
        assert x.size / 1.1 - 2 <= y.size <= x.size / 0.9 + 2
        assert np.abs(y).max() <= 0.99 + 1e-6
        assert 0.9 <= params.speed <= 1.1 and -12 <= params.gain_db <= 6 and 10 <= params.snr_db <= 30
    assert not np.array_equal(synth.augment(x, 0)[0], synth.augment(x, 1)[0])


def test_augmentation_building_blocks() -> None:
    x = _voiced(f0_hz=200.0)
    up = synth.pitch_shift(x, 12.0)
    assert up.size == x.size and abs(_peak_hz(up) - 400.0) < 15
    assert abs(synth.time_stretch(x, 1.2).size - 1.2 * x.size) <= 1
    assert abs(_peak_hz(synth.time_stretch(x, 1.2)) - 200.0) < 10
    assert synth.change_speed(x, 1.1).size == pytest.approx(x.size / 1.1, abs=2)
    t = np.arange(SR) / SR
    low, mid, high = (np.sin(2 * np.pi * f * t).astype(np.float32) for f in (100.0, 1000.0, 6000.0))
    assert np.std(synth.band_pass(low)) < 0.01 and np.std(synth.band_pass(high)) < 0.01
    assert np.std(synth.band_pass(mid)) == pytest.approx(np.std(mid), rel=0.02)
    rng = np.random.default_rng(0)
    pink = synth.colored_noise(SR, "pink", rng)
    power = np.abs(np.fft.rfft(pink)) ** 2
    assert power[10:200].mean() > 10 * power[4000:8000].mean()
    noisy = synth.add_noise(mid, synth.colored_noise(SR, "white", rng), snr_db=20.0)
    measured = 10 * np.log10(np.mean(mid**2) / np.mean((noisy - mid) ** 2))
    assert measured == pytest.approx(20.0, abs=0.01)
    wet = synth.reverb(x, 0.4, rng)
    assert wet.size == x.size and np.std(wet) == pytest.approx(np.std(x), rel=1e-3)
    assert np.abs(synth.apply_gain(x, 6.0)).max() <= 0.99 + 1e-6  # 0.5 * 2 would clip: gain is capped


# ------------------------------------------------------------------------------------------ manifest

def test_manifest_round_trip_and_relative_paths(tmp_path: Path) -> None:
    inside = tmp_path / "data" / "wavs" / "a.wav"
    outside = tmp_path / "elsewhere" / "b.wav"
    utts = [Utterance(inside, 1.25, "hello world", "espeak-en-us", "grammar-1"),
            Utterance(outside, 2.0, "it's five o'clock")]
    manifest = tmp_path / "data" / "train.jsonl"
    write_manifest(manifest, utts)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert rows[0] == {"audio_filepath": "wavs/a.wav", "duration": 1.25, "text": "hello world",
                       "speaker": "espeak-en-us", "sentence_id": "grammar-1"}
    assert rows[1]["audio_filepath"] == str(outside) and "speaker" not in rows[1]
    assert read_manifest(manifest) == utts
    (tmp_path / "m.jsonl").write_text('{"audio_filepath": "x/y.wav", "duration": 3, "text": "a b"}\n\n')
    assert read_manifest(tmp_path / "m.jsonl") == [Utterance(tmp_path / "x" / "y.wav", 3.0, "a b")]
    with pytest.raises(ValueError, match="normalized"):
        write_manifest(manifest, [Utterance(inside, 1.0, "Hello, World!")])
    with pytest.raises(ValueError, match="normalized"):
        write_manifest(manifest, [Utterance(inside, 1.0, "")])
    assert read_manifest(manifest) == utts  # a failed write leaves the old manifest intact


@pytest.mark.parametrize(("bad_line", "message"), [
    ("{not json", "not valid JSON"),
    ('{"audio_filepath": "a.wav", "duration": 1.0}', "missing key 'text'"),
    ('{"audio_filepath": "a.wav", "duration": "long", "text": "hi"}', "'duration'"),
    ('["a.wav", 1.0, "hi"]', "JSON object"),
])
def test_malformed_manifest_line_names_the_line(tmp_path: Path, bad_line: str, message: str) -> None:
    good = '{"audio_filepath": "a.wav", "duration": 1.0, "text": "hi there"}'
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n{good}\n{bad_line}\n")
    with pytest.raises(ValueError, match=rf"bad\.jsonl:3: .*{message}"):
        read_manifest(path)


def test_load_audio_resamples_and_names_bad_files(tmp_path: Path) -> None:
    stereo = np.stack([_voiced(1.0), _voiced(1.0)], axis=1)[::2]  # 8 kHz, 2 channels
    sf.write(tmp_path / "s.wav", stereo, 8000)
    audio = load_audio(tmp_path / "s.wav")
    assert audio.dtype == np.float32 and audio.ndim == 1 and abs(audio.size - 16000) <= 2
    (tmp_path / "junk.wav").write_bytes(b"RIFF....not audio")
    with pytest.raises(ValueError, match=r"junk\.wav"):
        load_audio(tmp_path / "junk.wav")
    with pytest.raises(ValueError, match=r"missing\.flac"):
        load_audio(tmp_path / "missing.flac")


# -------------------------------------------------------------------------------------- LibriSpeech

def _librispeech_tree(root: Path) -> None:
    for speaker, chapter, lines in (("19", "198", ["HELLO WORLD", "IT'S TWENTY PAST TEN"]),
                                    ("1272", "128104", ["MISTER QUILTER IS THE APOSTLE"])):
        folder = root / speaker / chapter
        folder.mkdir(parents=True)
        trans = []
        for i, text in enumerate(lines):
            utt_id = f"{speaker}-{chapter}-{i:04d}"
            sf.write(folder / f"{utt_id}.flac", _voiced(0.5 + i * 0.25), SR, format="FLAC")
            trans.append(f"{utt_id} {text}")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(trans) + "\n")


def test_librispeech_import(tmp_path: Path) -> None:
    root = tmp_path / "LibriSpeech" / "dev-clean"
    _librispeech_tree(root)
    out = tmp_path / "manifests" / "dev-clean.jsonl"
    assert librispeech.main(["--root", str(root.parent), "--out", str(out)]) == 0
    utts = read_manifest(out)
    assert [(u.sentence_id, u.speaker, u.text) for u in utts] == [
        ("1272-128104-0000", "1272", "mister quilter is the apostle"),
        ("19-198-0000", "19", "hello world"),
        ("19-198-0001", "19", "it's twenty past ten"),
    ]
    assert [u.duration_s for u in utts] == pytest.approx([0.5, 0.5, 0.75])
    assert all(u.audio_filepath.is_file() for u in utts)


def test_librispeech_errors_name_the_file(tmp_path: Path) -> None:
    _librispeech_tree(tmp_path)
    (tmp_path / "19" / "198" / "19-198-0001.flac").unlink()
    with pytest.raises(ValueError, match=r"19-198-0001\.flac is missing"):
        librispeech.import_librispeech(tmp_path)
    trans = tmp_path / "1272" / "128104" / "1272-128104.trans.txt"
    trans.write_text("1272-128104-0000\n")
    with pytest.raises(ValueError, match=r"1272-128104\.trans\.txt:1: expected"):
        librispeech.import_librispeech(tmp_path / "1272")
    assert librispeech.main(["--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.jsonl")]) == 1


# ----------------------------------------------------------------------------------------- the corpus

def test_failed_clip_is_reported_not_raised(tmp_path: Path) -> None:
    broken = synth.Voice(id="x-broken", engine="nonexistent-tts-binary", name="x", speaker="x")
    prompt = Prompt(text="hello there", spoken="Hello there.", source="grammar")
    result = corpus.make_clip(corpus.ClipJob("train", broken, prompt, 1, 1, tmp_path, 10.0))
    assert result.utterances == () and "x-broken" in result.error


@needs("espeak-ng")
@needs("flite")
def test_corpus_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "speech"
    argv = ["--out", str(out), "--sentences", "30", "--dev-fraction", "0.2", "--test-fraction", "0.2",
            "--voices", "espeak-en-us+m1", "espeak-en-gb+f2", "flite-slt",
            "--dev-voices", "espeak-en-gb+f2", "--test-voices", "flite-slt",
            "--train-clips", "3", "--dev-clips", "3", "--test-clips", "3", "--augment-copies", "1",
            "--workers", "2", "--seed", "5"]
    assert corpus.main(argv) == 0
    manifests = {s: read_manifest(out / f"{s}.jsonl") for s in corpus.SPLITS}
    assert [len(manifests[s]) for s in corpus.SPLITS] == [6, 3, 3]  # train: 3 clean + 3 augmented
    assert {u.speaker for u in manifests["train"]} == {"espeak-en-us+m1"}
    assert {u.speaker for u in manifests["dev"]} == {"espeak-en-gb+f2"}
    assert {u.speaker for u in manifests["test"]} == {"flite-slt"}
    texts = {s: {u.text for u in manifests[s]} for s in corpus.SPLITS}
    assert not (texts["train"] & texts["dev"]) and not (texts["train"] & texts["test"])
    lm_lines = (out / "lm_text.txt").read_text().splitlines()
    assert len(lm_lines) == 18 and texts["train"] <= set(lm_lines)
    assert not set(lm_lines) & (texts["dev"] | texts["test"])
    for utt in (u for s in corpus.SPLITS for u in manifests[s]):
        info = sf.info(str(utt.audio_filepath))
        assert (info.samplerate, info.channels) == (SR, 1)
        assert utt.duration_s == pytest.approx(info.frames / SR, abs=1e-3)
        assert utt.text == normalize_text(utt.text) and utt.text
    summary = json.loads((out / "corpus.json").read_text())
    assert summary["splits"]["train"]["clips"] == 6 and summary["failures"]["count"] == 0
    assert summary["seed"] == 5 and summary["command"].startswith("nui data speech --out")
    # Same seed, same clip: rebuild in place and compare one wav byte for byte.
    first = manifests["train"][0].audio_filepath.read_bytes()
    assert corpus.main(argv) == 1  # refuses to overwrite without --overwrite
    assert corpus.main([*argv, "--overwrite", "--workers", "1"]) == 0
    assert manifests["train"][0].audio_filepath.read_bytes() == first
