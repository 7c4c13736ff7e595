"""models/bert_classifier.py: BERT's [CLS] a [SEP] b [SEP] layout from what fairseq's
sentence_prediction feeds, the head initialized from BERT's pooler, fine-tuning through
the real fairseq-train, checkpoints with other heads, and fairseq-kd-dump-logits on it."""
import logging
import os

import numpy as np
import pytest
import torch

import utils
from fairseq_kd.cli import bert_tokenize
from fairseq_kd.data import array_store, bert_io, logits_store
from test_bert_teacher import raw_state, reference_bert

HEAD = "sentence_classification_head"
WORDS = [f"p{i}" for i in range(10)] + [f"n{i}" for i in range(10)]


def binarize_with_dict(text_dir, dest, dict_file, splits=("train", "valid")):
    """sentence_prediction data whose input dictionary is ``dict_file`` (BERT's whole vocabulary)."""
    label_dict = os.path.join(dest, "label.dict.txt")
    os.makedirs(dest, exist_ok=True)
    with open(label_dict, "w") as f:
        f.write("0 1\n1 1\n")
    for key, srcdict in (("input0", dict_file), ("input1", dict_file), ("label", label_dict)):
        if not os.path.exists(os.path.join(text_dir, f"train.{key}")):
            continue
        utils._preprocess_in_process([
            "--only-source", "--workers", "1", "--destdir", os.path.join(dest, key), "--srcdict", srcdict,
            "--trainpref", os.path.join(text_dir, f"train.{key}"),
            "--validpref", os.path.join(text_dir, f"valid.{key}"),
        ])
    return dest


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random BERT over p*/n* words, the synthetic task (label 1 = more p than n words)
    as WordPiece text binarized with BERT's whole vocabulary (the teacher's data) and as words
    with their own dictionary (a student's), and a teacher fine-tuned by fairseq-train."""
    root = tmp_path_factory.mktemp("bert_classifier")
    bert = bert_io.write_checkpoint(str(root / "bert"), WORDS, with_head=False, max_position_embeddings=40)
    text = utils.make_classification_task(str(root / "text"), n_train=240, n_valid=60, vocab=10)
    wp = root / "wp"
    wp.mkdir()
    for split in ("train", "valid"):
        bert_tokenize.cli_main([os.path.join(text, f"{split}.input0"), "-o", str(wp / f"{split}.input0"),
                                "--vocab", bert] + (["--dict-out", str(wp / "dict.txt")] if split == "train" else []))
        os.link(os.path.join(text, f"{split}.label"), wp / f"{split}.label")
    teacher_data = binarize_with_dict(str(wp), str(root / "bin_teacher"), str(wp / "dict.txt"))
    student_data = utils.preprocess_classification(text, str(root / "bin_student"))
    proc = train(teacher_data, bert, str(root / "teacher"), max_update=90)
    return {"root": root, "bert": bert, "text": text, "teacher_data": teacher_data, "student_data": student_data,
            "teacher": str(root / "teacher" / "checkpoint_last.pt"), "logs": utils.json_logs(proc.stdout + proc.stderr)}


def train(data_bin, bert, save_dir, max_update, extra=()):
    return utils.train_classifier(
        data_bin, save_dir, arch=["--arch", "bert_classifier_base", "--bert-path", bert, "--dropout", "0"],
        max_update=max_update,
        extra=["--lr", "0.003", "--batch-size", "24", "--log-interval", "10", "--best-checkpoint-metric", "accuracy",
               "--maximize-best-checkpoint-metric", *extra])


def build(data_bin, bert, extra=()):
    _, task, model, _ = utils.build_in_process([
        data_bin, "--task", "sentence_prediction", "--num-classes", "2", "--arch", "bert_classifier_base",
        "--bert-path", bert, "--criterion", "sentence_prediction", "--cpu", *extra,
    ])
    return task, model.eval()


def test_dictionary_of_the_whole_vocabulary_maps_every_row_to_its_piece(setup):
    task, model = build(setup["teacher_data"], setup["bert"])
    vocab = bert_io.read_vocab(setup["bert"])
    d = task.source_dictionary
    # fairseq's <s> <pad> </s> <unk>, then vocab.txt without [PAD] [UNK] [CLS] [SEP], then <mask>.
    assert d.symbols[4:-1] == [p for p in vocab if p not in ("[PAD]", "[UNK]", "[CLS]", "[SEP]")]
    expected = [vocab.index(p) for p in ("[CLS]", "[PAD]", "[SEP]", "[UNK]")] + \
        [vocab.index(s) for s in d.symbols[4:-1]] + [vocab.index("[MASK]")]
    assert model.bert_ids.tolist() == expected
    word = raw_state(setup["bert"])["embeddings.word_embeddings.weight"]
    assert torch.equal(model.embeddings.word_embeddings.weight, word[expected])
    assert isinstance(model.max_positions(), int) and model.max_positions() == 39


def test_head_starts_from_bert_pooler(setup, tmp_path, caplog):
    _, model = build(setup["teacher_data"], setup["bert"])
    state = raw_state(setup["bert"])
    head = model.classification_heads[HEAD]
    assert torch.equal(head.dense.weight, state["pooler.dense.weight"])
    assert torch.equal(head.dense.bias, state["pooler.dense.bias"])
    assert head.out_proj.out_features == 2 and torch.count_nonzero(head.out_proj.bias) == 0
    model.register_classification_head("wide", num_classes=3, inner_dim=24)  # not the pooler's size
    assert model.classification_heads["wide"].dense.weight.shape == (24, 16)
    no_pooler = bert_io.write_checkpoint(str(tmp_path / "bert"), WORDS, with_head=False, with_pooler=False,
                                         max_position_embeddings=40)
    with caplog.at_level(logging.INFO, logger="fairseq_kd.models.bert_classifier"):
        _, model = build(setup["teacher_data"], no_pooler)
    assert "no pooler in the checkpoint: classification heads start random" in caplog.text
    assert torch.count_nonzero(model.classification_heads[HEAD].dense.bias) == 0


def test_layout_is_bert_input_for_sentences_and_pairs(setup):
    task, model = build(setup["teacher_data"], setup["bert"])
    d, vocab = task.source_dictionary, bert_io.read_vocab(setup["bert"])
    a, b = [d.index("p1"), d.index("n2")], [d.index("p3")]
    bos, eos, pad = d.bos(), d.eos(), d.pad()
    rows = torch.tensor([
        a + [eos, pad, pad, pad, pad],  # single sentence, right-padded (sentence_prediction's default)
        [pad, pad, pad, bos] + a + [eos],  # --init-token 0, left-padded
        a + [eos] + b + [eos, pad, pad],  # a pair, no separator token
        [bos] + a + [eos, eos] + b + [eos],  # a pair, --init-token 0 --separator-token 2 (RoBERTa's)
    ])
    ids, segments, allowed = model.layout(rows)
    single, pair = [bos] + a + [eos, pad, pad], [bos] + a + [eos] + b + [eos]
    assert ids.tolist() == [single, single, pair, pair]
    assert segments.tolist() == [[0] * 6, [0] * 6, [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1]]
    assert allowed.shape == (4, 1, 1, 6) and allowed.sum(-1).view(-1).tolist() == [4, 4, 6, 6]

    # Features equal BERT's own computation on [CLS] p1 n2 [SEP] p3 [SEP]; padding changes nothing.
    pieces = ["[CLS]", "p1", "n2", "[SEP]", "p3", "[SEP]"]
    ref = reference_bert(raw_state(setup["bert"]), bert_io.read_config(setup["bert"]),
                         torch.tensor([vocab.index(p) for p in pieces]), torch.tensor([0, 0, 0, 0, 1, 1]))
    with torch.no_grad():
        features, extra = model(rows, features_only=True)
        logits = model(rows, features_only=True, classification_head_name=HEAD)[0]
        alone = model(torch.tensor([a + [eos]]), classification_head_name=HEAD)[0]
    assert torch.allclose(features[2], ref, atol=1e-5) and torch.allclose(features[3], ref, atol=1e-5)
    assert extra["padding_mask"][0].tolist() == [False] * 4 + [True] * 2
    assert torch.allclose(logits[0], alone[0], atol=1e-5) and torch.allclose(logits[1], alone[0], atol=1e-5)
    assert not torch.allclose(logits[0], logits[2], atol=1e-3)  # the second sentence is read
    with pytest.raises(ValueError, match="no language-model output"):
        model(rows)


def test_fine_tuning_with_fairseq_sentence_prediction_learns_the_task(setup):
    # 9 epochs of 10 updates; the first epoch's numbers are after 10 updates already
    train_loss = [float(r["loss"]) for r in setup["logs"] if "update" in r and "loss" in r]
    valid_acc = [float(r["valid_accuracy"]) for r in setup["logs"] if "valid_accuracy" in r]
    assert len(train_loss) == len(valid_acc) == 9
    assert np.mean(train_loss[-3:]) < 0.6 * train_loss[0], train_loss
    assert valid_acc[-1] >= 80 and valid_acc[-1] > valid_acc[0] + 15, valid_acc


def test_checkpoint_loads_without_bert_path_and_dump_logits_equals_a_forward(setup, tmp_path):
    out = str(tmp_path / "logits")
    proc = utils.run([utils.command("fairseq-kd-dump-logits"), "--path", setup["teacher"], "--data",
                      setup["teacher_data"], "--align-with", setup["student_data"], "--split", "valid",
                      "--out", out, "--batch-size", "7", "--cpu"])
    assert "60 sentences x 2 classes of split 'valid'" in proc.stdout
    header, arrays = array_store.open_store(out, kind=logits_store.KIND)
    logits_store.LogitsStore(out).check(setup["student_data"], "valid", 2)  # the student accepts it

    import fairseq_kd  # noqa: F401
    from fairseq import checkpoint_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [setup["teacher"]], arg_overrides={"data": setup["teacher_data"], "bert_path": str(tmp_path / "gone")})
    model = models[0].eval()
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    with torch.no_grad():
        for i in range(0, 60, 7):
            tokens = dataset[i]["net_input.src_tokens"].unsqueeze(0)
            z = model(tokens, features_only=True, classification_head_name=HEAD)[0]
            np.testing.assert_allclose(arrays["logits"][i], z[0].numpy(), rtol=1e-4, atol=1e-5)
    gold = np.array(logits_store.labels_of(setup["teacher_data"], "valid", task.label_dictionary)).astype(int)
    assert (arrays["logits"].argmax(1) == gold).mean() >= 0.8


def test_checkpoints_with_other_heads_load(setup):
    state = torch.load(setup["teacher"], map_location="cpu", weights_only=False)["model"]
    trained = {k: v for k, v in state.items() if k.startswith(f"classification_heads.{HEAD}.")}
    assert trained and "bert_ids" in state

    # no heads in the checkpoint (e.g. encoder only): the model keeps its own, freshly made
    _, model = build(setup["teacher_data"], setup["bert"])
    own = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("classification_heads.")}
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("classification_heads.")})
    assert all(torch.equal(model.state_dict()[k], v) for k, v in own.items())

    # a head the model lacks is dropped, unless --load-checkpoint-heads
    extra = {k.replace(HEAD, "other"): v for k, v in trained.items()}
    model.load_state_dict({**state, **extra})
    assert set(model.classification_heads) == {HEAD}
    _, model = build(setup["teacher_data"], setup["bert"], extra=["--load-checkpoint-heads"])
    model.load_state_dict({**state, **extra})
    assert set(model.classification_heads) == {HEAD, "other"}
    assert torch.equal(model.classification_heads["other"].out_proj.weight,
                       trained[f"classification_heads.{HEAD}.out_proj.weight"])

    # a head of another size (3 classes) is dropped: the model's own is kept
    _, model = build(setup["teacher_data"], setup["bert"], extra=["--num-classes", "3"])
    model.load_state_dict(state)
    assert model.classification_heads[HEAD].out_proj.out_features == 3
