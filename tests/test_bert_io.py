"""fairseq_kd/data/bert_io.py: BERT's special pieces, vocabulary helpers (casing
detection, vocab.txt lookup) and reading the word-embedding table."""
import pytest
import torch

from fairseq_kd.data import bert_io


def _vocab(tmp_path, pieces, name="v"):
    path = tmp_path / name
    path.mkdir()
    (path / "vocab.txt").write_text("\n".join(list(bert_io.SPECIALS) + pieces) + "\n", encoding="utf-8")
    return path


def test_special_pieces_and_the_fairseq_symbols_that_stand_for_them():
    assert bert_io.SPECIALS == ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    assert bert_io.FAIRSEQ_TO_BERT_SPECIALS == {
        "<s>": "[CLS]", "<pad>": "[PAD]", "</s>": "[SEP]", "<unk>": "[UNK]", "<mask>": "[MASK]"}


def test_uncased_vocabulary_holding_U_211D_is_uncased(tmp_path):
    """bert-base-uncased's and MiniLM's vocabularies hold U+211D (double-struck R): an
    upper-case letter to Unicode, which lowercasing leaves as it is."""
    assert "\u211d".isupper() and "\u211d".lower() == "\u211d"
    uncased = _vocab(tmp_path, ["the", "cat", "\u211d", "##\u211d", "[unused0]"])
    assert bert_io.is_uncased(str(uncased / "vocab.txt"))
    assert bert_io.is_uncased(str(uncased))  # the directory works too
    cased = _vocab(tmp_path, ["the", "The", "\u211d"], name="cased")
    assert not bert_io.is_uncased(str(cased / "vocab.txt"))
    greek = _vocab(tmp_path, ["\u03b1", "\u0391"], name="greek")  # alpha and ALPHA: cased without A-Z
    assert not bert_io.is_uncased(str(greek))


def test_tokenizer_config_decides_when_it_says(tmp_path):
    cased = _vocab(tmp_path, ["The"])
    (cased / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    assert bert_io.is_uncased(str(cased / "vocab.txt"))
    uncased = _vocab(tmp_path, ["the"], name="u")
    (uncased / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    assert not bert_io.is_uncased(str(uncased))
    for text in ("not json", "[1, 2]", '{"do_lower_case": null}'):  # no answer: the pieces decide
        (uncased / "tokenizer_config.json").write_text(text)
        assert bert_io.is_uncased(str(uncased))


def test_vocab_file_names_what_is_wrong(tmp_path):
    v = _vocab(tmp_path, ["the"])
    assert bert_io.vocab_file(str(v)) == str(v / "vocab.txt") == bert_io.vocab_file(str(v / "vocab.txt"))
    with pytest.raises(FileNotFoundError, match="BERT vocabulary not found: .*nowhere"):
        bert_io.vocab_file(str(tmp_path / "nowhere"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        bert_io.vocab_file(str(tmp_path / "empty.txt"))
    (tmp_path / "nounk.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"has no \[UNK\] piece"):
        bert_io.vocab_file(str(tmp_path / "nounk.txt"))


@pytest.mark.parametrize("with_head,safetensors", [(True, True), (False, True), (True, False)])
def test_read_word_embeddings_is_the_state_dicts_table(tmp_path, with_head, safetensors):
    path = bert_io.write_checkpoint(str(tmp_path / "bert"), ["the", "cat"], with_head=with_head,
                                    safetensors=safetensors)
    table, file = bert_io.read_word_embeddings(path)
    encoder, _, state_file = bert_io.read_state_dict(path)
    assert file == state_file and file.endswith(bert_io.WEIGHTS[0 if safetensors else 1])
    assert torch.equal(table, encoder["embeddings.word_embeddings.weight"])
    assert table.shape == (len(bert_io.SPECIALS) + 2, 16)


def test_read_word_embeddings_errors_name_the_file(tmp_path):
    with pytest.raises(bert_io.BertCheckpointError, match="has no weights"):
        bert_io.read_word_embeddings(str(_vocab(tmp_path, ["the"])))
    broken = _vocab(tmp_path, ["the"], name="broken")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(bert_io.BertCheckpointError, match=r"model.safetensors could not be read"):
        bert_io.read_word_embeddings(str(broken))
    from safetensors.torch import save_file

    other = _vocab(tmp_path, ["the"], name="other")
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(other / "model.safetensors"))
    with pytest.raises(bert_io.BertCheckpointError, match="has no embeddings.word_embeddings.weight"):
        bert_io.read_word_embeddings(str(other))
