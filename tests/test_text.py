"""The tokenizer: packaged, reproducible, RoBERTa-compatible ids, truncation from its JSON."""

import pytest
from tokenizers import Tokenizer

from proxyformer.config import get_preset
from proxyformer.text import PAD_ID, build_tiny_tokenizer, encode_texts, load_tokenizer, tiny_tokenizer


def test_packaged_tokenizer_is_reproducible():
    assert build_tiny_tokenizer().to_str() == tiny_tokenizer().to_str()


def test_roberta_special_tokens_and_whole_words(tokenizer):
    encoding = tokenizer.encode("the small red circle moving left")
    assert encoding.ids[0] == tokenizer.token_to_id("<s>") == 0
    assert encoding.ids[-1] == tokenizer.token_to_id("</s>") == 2
    assert tokenizer.token_to_id("<pad>") == PAD_ID == 1
    assert len(encoding.ids) == 8  # six words, each one token, plus <s> and </s>
    assert max(tokenizer.get_vocab().values()) < get_preset("tiny").text.vocab_size


def test_unknown_words_fall_back_to_bytes(tokenizer):
    encoding = tokenizer.encode("a zebra-striped hovercraft ü")
    assert tokenizer.token_to_id("<unk>") not in encoding.ids
    assert tokenizer.decode(encoding.ids) == " a zebra-striped hovercraft ü"


def test_padding_and_truncation_live_in_the_saved_json(tmp_path, tokenizer):
    ids, mask = encode_texts(tokenizer, ["a", "the big blue square moving up"])
    assert ids.shape == mask.shape == (2, 8)
    assert ids[0, 3:].eq(PAD_ID).all() and mask[0, 3:].eq(0).all()
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    reloaded = Tokenizer.from_file(str(path))  # what the runtime does: no proxyformer import
    long = " ".join(["red"] * 200)
    assert len(reloaded.encode(long).ids) == get_preset("tiny").text.max_length
    assert reloaded.encode(long).ids[-1] == 2  # truncation keeps </s>


def test_explicit_tokenizer_path_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer not found"):
        load_tokenizer(get_preset("tiny"), path=tmp_path / "missing.json")
    with pytest.raises(ValueError, match="no expressions"):
        encode_texts(tiny_tokenizer(), [])
