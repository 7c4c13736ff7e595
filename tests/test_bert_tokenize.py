"""cli/bert_tokenize.py: WordPiece tokenization with a teacher's vocab.txt, casing
detection, detokenization back to text, and errors."""
import gzip
import json

import pytest

import utils
from fairseq_kd.cli.bert_tokenize import cli_main, detokenize_line
from fairseq_kd.data.bert_io import is_uncased

WORDS = ["the", "cat", "sit", "##s", "on", "mat", ".", ",", "'", "s", "a", "##t", "cafe", "dog"]


def vocab(tmp_path, words=WORDS, name="v"):
    path = tmp_path / name
    path.mkdir()
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    return path


def convert(tmp_path, vocab_dir, text, *options, gz=False):
    src = tmp_path / ("in.txt.gz" if gz else "in.txt")
    if gz:
        with gzip.open(src, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        src.write_text(text, encoding="utf-8")
    out = tmp_path / "out.txt"
    cli_main([str(src), "-o", str(out), "--vocab", str(vocab_dir), *options])
    return out.read_text(encoding="utf-8").splitlines()


def test_uncased_vocab_lowercases_strips_accents_and_splits_pieces(tmp_path):
    v = vocab(tmp_path)
    assert is_uncased(str(v / "vocab.txt"))
    lines = convert(tmp_path, v, "The cats sit on a mat.\n\nCafé, Zebra\n", gz=True)
    assert lines == ["the cat ##s sit on a mat .", "", "cafe , [UNK]"]
    assert json.load(open(tmp_path / "out.txt.command.json"))["args"]["vocab"] == str(v)


def test_cased_vocab_keeps_case_and_tokenizer_config_decides(tmp_path):
    cased = vocab(tmp_path, WORDS + ["The"], name="cased")
    assert not is_uncased(str(cased / "vocab.txt"))
    assert convert(tmp_path, cased, "The cat\n") == ["The cat"]
    # a tokenizer_config.json beside vocab.txt overrides the guess (MiniLM's vocab holds U+211D)
    (cased / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    assert is_uncased(str(cased / "vocab.txt"))
    assert convert(tmp_path, cased, "The cat\n", "--lowercase", "no") == ["The cat"]
    assert convert(tmp_path, cased, "The cat\n") == ["the cat"]


def test_detokenize_glues_pieces_and_moses_fixes_punctuation(tmp_path):
    v = vocab(tmp_path)
    pieces = convert(tmp_path, v, "the cats sit on the cat's mat.\n")
    assert pieces == ["the cat ##s sit on the cat ' s mat ."]
    (tmp_path / "pieces.txt").write_text(pieces[0] + "\n")
    out = tmp_path / "text.txt"
    cli_main([str(tmp_path / "pieces.txt"), "-o", str(out), "--vocab", str(v), "--detokenize", "--lang", "en"])
    assert out.read_text() == "the cats sit on the cat's mat.\n"
    assert detokenize_line("a ##t cat ##s") == "at cats"


def test_normalize_applies_only_the_vocab_normalization(tmp_path):
    v = vocab(tmp_path)
    assert convert(tmp_path, v, "Café, Zebra's.\n", "--normalize") == ["cafe, zebra's."]


def test_missing_files_are_named(tmp_path, capsys):
    v = vocab(tmp_path)
    with pytest.raises(SystemExit):
        cli_main([str(tmp_path / "missing.txt"), "--vocab", str(v)])
    assert "input not found: " + str(tmp_path / "missing.txt") in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main([str(tmp_path / "missing.txt"), "--vocab", str(tmp_path / "nodir")])
    assert "BERT vocabulary not found: " + str(tmp_path / "nodir") in capsys.readouterr().err


def test_console_script_to_stdout(tmp_path):
    v = vocab(tmp_path)
    (tmp_path / "x.txt").write_text("A dog sits.\n")
    proc = utils.run([utils.command("fairseq-kd-bert-tokenize"), str(tmp_path / "x.txt"), "--vocab", str(v)])
    assert proc.stdout == "a dog sit ##s .\n"
    assert "tokenized 1 lines, 5 pieces (lowercase=True)" in proc.stderr


def test_dict_out_writes_the_whole_vocabulary_as_a_fairseq_dictionary(tmp_path):
    from fairseq.data import Dictionary

    v = vocab(tmp_path, WORDS + ["the", "<s>"])  # a duplicate and a fairseq special are left out
    out = tmp_path / "d" / "dict.txt"
    cli_main(["--vocab", str(v), "--dict-out", str(out)])  # no input needed
    d = Dictionary.load(str(out))
    assert d.symbols[:4] == ["<s>", "<pad>", "</s>", "<unk>"]  # [CLS] [PAD] [SEP] [UNK] map to these
    assert d.symbols[4:] == ["[MASK]"] + WORDS
    with pytest.raises(SystemExit):
        cli_main(["--vocab", str(v)])  # neither input nor --dict-out
