"""Caption normalization and the word-level tokenizer shared by captioner training and serving."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.caption_text import (
    BOS,
    EOS,
    PAD,
    UNK,
    CaptionTokenizer,
    manifest_end_ids,
    normalize_caption,
    train_tokenizer,
)

CAPTIONS = ["Two cats on grass.", "A red bus", "two dogs, on GRASS", "a cat", "A café's cat"]


def test_normalize_drops_punctuation_case_and_accents_keeps_inner_apostrophes() -> None:
    assert normalize_caption("A Café's  red BUS, on grass!") == "a cafe's red bus on grass"
    assert normalize_caption("'quoted' rock&roll\tnew-line 2") == "quoted rock and roll new line 2"
    assert normalize_caption("😀") == ""


def test_special_ids_are_fixed_and_words_sorted_by_frequency() -> None:
    tok = train_tokenizer(CAPTIONS)
    vocab = tok.tokenizer.get_vocab()
    assert [vocab[t] for t in ("[PAD]", "[BOS]", "[EOS]", "[UNK]")] == [PAD, BOS, EOS, UNK]
    # "a" (3 times) is the most frequent word, so it gets the first word id.
    assert vocab["a"] == 4
    assert tok.vocab_size == 4 + len({w for c in CAPTIONS for w in normalize_caption(c).split()})


def test_round_trip_save_load_and_unknown_words(tmp_path) -> None:
    tok = train_tokenizer(CAPTIONS)
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = CaptionTokenizer.from_file(path)
    ids = loaded.encode("Two cats, on a RED bus!")
    assert ids[0] == BOS and ids[-1] == EOS and UNK not in ids
    assert loaded.decode(ids) == "two cats on a red bus"
    assert loaded.encode("a zebra")[2] == UNK
    # The file is a plain Hugging Face tokenizer that adds BOS/EOS by itself.
    assert json.loads(path.read_text())["model"]["type"] == "WordLevel"
    vocab = loaded.tokenizer.get_vocab()
    assert loaded.tokenizer.encode("a cat").ids == [BOS, vocab["a"], vocab["cat"], EOS]


def test_min_count_and_truncation_and_batch() -> None:
    tok = train_tokenizer(["a a b"], min_count=2)
    assert tok.vocab_size == 5 and tok.encode("b") == [BOS, UNK, EOS]
    tok = train_tokenizer(CAPTIONS)
    ids = tok.encode("two cats on grass", max_len=4)
    assert len(ids) == 4 and ids[-1] == EOS
    batch = tok.encode_batch(["a cat", "two dogs on grass"], max_len=5)
    assert batch.shape == (2, 5) and batch.dtype == np.int64
    vocab = tok.tokenizer.get_vocab()
    assert batch[0].tolist() == [BOS, vocab["a"], vocab["cat"], EOS, PAD] and batch[1, -1] == EOS
    with pytest.raises(ValueError, match="max_len"):
        tok.encode("a cat", max_len=1)


def test_decode_stops_at_eos_and_rejects_out_of_range_ids() -> None:
    tok = train_tokenizer(CAPTIONS)
    a, cat = tok.tokenizer.token_to_id("a"), tok.tokenizer.token_to_id("cat")
    assert tok.decode(np.array([BOS, a, cat, EOS, a, PAD])) == "a cat"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([BOS, 10_000])


def test_rejects_a_tokenizer_with_other_special_ids(tmp_path) -> None:
    tok = train_tokenizer(CAPTIONS)
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    vocab["[PAD]"], vocab["[BOS]"] = vocab["[BOS]"], vocab["[PAD]"]
    with pytest.raises(ValueError, match=r"\[PAD\] at id 1"):
        CaptionTokenizer.from_str(json.dumps(data))


def test_caption_end_ids_are_words_that_end_enough_of_their_captions() -> None:
    captions = ["a cat on grass", "a dog on grass", "two cats", "the letter a", "a cat"] + ["a dog"] * 200
    tok = train_tokenizer(captions)
    ends = {tok.id_to_token(i) for i in tok.caption_end_ids(captions)}
    assert ends == {"grass", "cats", "cat", "dog"}  # "a" ends 1 of its 205 captions: under 1 %
    assert "a" in {tok.id_to_token(i) for i in tok.caption_end_ids(captions, min_share=0.0)}
    assert UNK not in tok.caption_end_ids(["an unseen word"])


def test_manifest_end_ids_reads_the_list_or_refuses_it() -> None:
    assert manifest_end_ids({}, 10) is None  # an older manifest: a caption may end anywhere
    assert manifest_end_ids({"caption_end_ids": [4, 9]}, 10) == (4, 9)
    for bad in ([], [2], [10], "4", [4.0]):  # empty, a special token, past the vocabulary, not a list of ints
        with pytest.raises(ValueError, match="caption_end_ids"):
            manifest_end_ids({"caption_end_ids": bad}, 10)
