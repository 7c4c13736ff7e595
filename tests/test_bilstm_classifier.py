"""--arch bilstm_classifier (Tang et al. 2019): segments, siamese features, word vectors, training."""
import argparse
import os

import pytest
import torch

import utils
from fairseq.data import Dictionary
from fairseq_kd.models import bilstm_classifier as bc


class FakeTask:
    def __init__(self, dictionary):
        self.source_dictionary = dictionary


def dictionary(words=("p0", "p1", "n0", "n1")):
    d = Dictionary()  # <s>=0 <pad>=1 </s>=2 <unk>=3
    for w in words:
        d.add_symbol(w)
    return d


def build(d, **overrides):
    args = argparse.Namespace(embed_dim=6, lstm_hidden_size=5, classifier_hidden_size=7, dropout=0.0, **overrides)
    model = bc.BiLSTMClassifierModel.build_model(args, FakeTask(d))
    model.register_classification_head("head", num_classes=3)
    return model.eval()


def test_split_segments_drops_specials_and_splits_at_first_eos():
    pad, eos, bos = 1, 2, 0
    # <s> 5 6 </s> </s> 7 8 9 </s> ; 5 </s> 7 </s> pad pad pad pad pad (RoBERTa-style pair)
    tokens = torch.tensor([[bos, 5, 6, eos, eos, 7, 8, 9, eos], [5, eos, 7, eos, pad, pad, pad, pad, pad]])
    (a, la), (b, lb) = bc.split_segments(tokens, [bos, pad, eos], eos, pad, 2)
    assert a.tolist() == [[5, 6], [5, pad]] and la.tolist() == [2, 1]
    assert b.tolist() == [[7, 8, 9], [7, pad, pad]] and lb.tolist() == [3, 1]
    [(one, lone)] = bc.split_segments(tokens, [bos, pad, eos], eos, pad, 1)
    assert one.tolist() == [[5, 6, 7, 8, 9], [5, 7, pad, pad, pad]] and lone.tolist() == [5, 2]


def test_concat_compare():
    h1, h2 = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 1.0]])
    assert bc.concat_compare(h1, h2).tolist() == [[1, -2, 3, 1, 3, -2, 2, 3]]


def test_features_do_not_depend_on_padding_or_batch():
    torch.manual_seed(0)
    d = dictionary()
    model = build(d)
    sents = [[4, 5, 6, 2], [7, 2]]
    batch = torch.tensor([[4, 5, 6, 2], [7, 2, 1, 1]])
    logits, extra = model(batch, features_only=True, classification_head_name="head")
    assert logits.shape == (2, 3) and extra["features"].shape == (2, 2 * 5)
    for i, s in enumerate(sents):
        alone = model(torch.tensor([s]))[0]  # no head: features
        assert torch.allclose(alone[0], extra["features"][i], atol=1e-6)
    # features = [last forward state, first backward state] of the words (specials dropped)
    emb = model.encoder.embed_tokens(torch.tensor([[4, 5, 6]]))
    out, _ = model.encoder.lstm(emb)  # 1 x 3 x 2H
    expected = torch.cat([out[0, -1, :5], out[0, 0, 5:]])
    assert torch.allclose(extra["features"][0], expected, atol=1e-6)


def test_siamese_encodes_both_sentences_with_one_encoder():
    torch.manual_seed(0)
    d = dictionary()
    model = build(d, siamese=True)
    pair = torch.tensor([[4, 5, 2, 6, 7, 4, 2]])
    _, extra = model(pair, features_only=True, classification_head_name="head")
    h1 = model.encoder(torch.tensor([[4, 5]]), torch.tensor([2]))  # 1 x 2H, specials dropped
    h2 = model.encoder(torch.tensor([[6, 7, 4]]), torch.tensor([3]))
    assert torch.allclose(extra["features"], bc.concat_compare(h1, h2), atol=1e-6)
    assert model.classification_heads["head"].dense.in_features == 4 * 2 * 5


def test_architectures_have_the_papers_sizes():
    for arch, (h, r, siamese) in {"bilstm_classifier": (150, 200, False), "bilstm_classifier_300": (300, 400, False),
                                  "bilstm_classifier_siamese": (300, 400, True)}.items():
        args = argparse.Namespace()
        from fairseq.models import ARCH_CONFIG_REGISTRY

        ARCH_CONFIG_REGISTRY[arch](args)
        assert (args.lstm_hidden_size, args.classifier_hidden_size, args.siamese, args.embed_dim) == (h, r, siamese, 300)


def test_word_vectors_word2vec_and_glove_formats(tmp_path):
    d = dictionary()
    w2v = tmp_path / "vectors.vec"
    w2v.write_text("3 6\np0 1 2 3 4 5 6\nzzz 0 0 0 0 0 0\nn1 -1 -2 -3 -4 -5 -6\n")
    glove = tmp_path / "glove.txt"
    glove.write_text("p0 1 2 3 4 5 6\nn1 -1 -2 -3 -4 -5 -6\n")
    for path in (w2v, glove):
        vectors, n = bc.read_word_vectors(str(path), d, 6)
        assert sorted(vectors) == [d.index("p0"), d.index("n1")]
        assert vectors[d.index("n1")].tolist() == [-1, -2, -3, -4, -5, -6]
    model = build(d, embed_path=str(w2v), freeze_embed=True)
    weight = model.encoder.embed_tokens.weight
    assert weight[d.index("p0")].tolist() == [1, 2, 3, 4, 5, 6]
    assert weight[d.pad()].abs().sum() == 0 and not weight.requires_grad
    with pytest.raises(ValueError, match=r"vectors.vec:2: vector of 'p0' has 6 values, --embed-dim is 5"):
        bc.read_word_vectors(str(w2v), d, 5)


def test_trains_through_fairseq_train(tmp_path):
    """A few updates with fairseq's sentence_prediction task and criterion; frozen word vectors
    come back unchanged in the checkpoint and validation accuracy is logged."""
    data = utils.preprocess_classification(utils.make_classification_task(str(tmp_path / "text")),
                                           str(tmp_path / "bin"))
    d = Dictionary.load(os.path.join(data, "input0", "dict.txt"))
    vectors = tmp_path / "vectors.txt"
    vectors.write_text("p1 " + " ".join(["0.5"] * 16) + "\n")
    proc = utils.train_classifier(data, str(tmp_path / "ck"), max_update=26,
                                  extra=["--embed-path", vectors, "--freeze-embed"])
    valid = [r for r in utils.json_logs(proc.stdout + proc.stderr) if "valid_accuracy" in r]
    assert valid and float(valid[-1]["valid_accuracy"]) > 60  # learnable synthetic task, chance ~50
    from fairseq_kd import checkpoint

    state = checkpoint.load(str(tmp_path / "ck" / "checkpoint_last.pt"))
    emb = state["model"]["encoder.embed_tokens.weight"]
    assert emb[d.index("p1")].tolist() == [0.5] * 16
    assert state["model"]["classification_heads.sentence_classification_head.out_proj.weight"].shape == (2, 16)


def test_siamese_trains_on_sentence_pairs_through_fairseq_train(tmp_path):
    """input0 and input1 binarized separately; fairseq's task concatenates them and the
    siamese model splits them again at the first </s>."""
    data = utils.preprocess_classification(
        utils.make_classification_task(str(tmp_path / "text"), pairs=True), str(tmp_path / "bin"))
    proc = utils.train_classifier(data, str(tmp_path / "ck"), arch=utils.TINY_BILSTM + ["--siamese"], max_update=26)
    valid = [r for r in utils.json_logs(proc.stdout + proc.stderr) if "valid_accuracy" in r]
    assert valid and float(valid[-1]["valid_accuracy"]) > 60
    from fairseq_kd import checkpoint

    state = checkpoint.load(str(tmp_path / "ck" / "checkpoint_last.pt"))
    assert state["model"]["classification_heads.sentence_classification_head.dense.weight"].shape == (16, 4 * 2 * 16)
