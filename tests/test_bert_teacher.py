"""models/bert_teacher.py and data/bert_io.py: Hugging Face BERT import, the
C-MLM input layout, the left-to-right ablation, and the errors on bad checkpoints."""
import json
import logging
import math
import os

import pytest
import torch
import torch.nn.functional as F

import utils
from fairseq_kd.data import bert_io


@pytest.fixture(scope="module")
def bert_task(tmp_path_factory):
    return utils.make_bert_task(str(tmp_path_factory.mktemp("bert_teacher")), n_train=40)


def build(data_bin, bert_dir, arch="bert_teacher_base", extra=()):
    _, task, model, _ = utils.build_in_process([
        data_bin, "--task", "conditional_mlm", "--arch", arch, "--bert-path", bert_dir,
        "--criterion", "label_smoothed_cross_entropy", "--cpu", *extra,
    ])
    return task, model.eval()


def reference_bert(state, config, ids, segments):
    """BERT's encoder written out from the raw Hugging Face tensors: 1 x L -> L x H."""
    sd = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in state.items()}
    H, heads, eps = config["hidden_size"], config["num_attention_heads"], config["layer_norm_eps"]

    def ln(x, name):
        return F.layer_norm(x, (H,), sd[name + ".weight"], sd[name + ".bias"], eps)

    def lin(x, name):
        return x @ sd[name + ".weight"].T + sd[name + ".bias"]

    L = len(ids)
    x = sd["embeddings.word_embeddings.weight"][ids] + sd["embeddings.position_embeddings.weight"][:L]
    x = ln(x + sd["embeddings.token_type_embeddings.weight"][segments], "embeddings.LayerNorm")
    d = H // heads
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(x, p + f"attention.self.{n}").view(L, heads, d).transpose(0, 1) for n in ("query", "key", "value"))
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1) @ v  # heads x L x d
        x = ln(lin(att.transpose(0, 1).reshape(L, H), p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        h = lin(F.gelu(lin(x, p + "intermediate.dense")), p + "output.dense")
        x = ln(h + x, p + "output.LayerNorm")
    return x


def raw_state(bert_dir):
    from safetensors.torch import load_file

    return load_file(os.path.join(bert_dir, "model.safetensors"))


def test_import_with_head_copies_every_tensor_and_matches_a_direct_bert(bert_task):
    bert_dir, data_bin = bert_task
    task, model = build(data_bin, bert_dir)
    d = task.target_dictionary
    vocab = bert_io.read_vocab(bert_dir)
    state = raw_state(bert_dir)
    config = bert_io.read_config(bert_dir)
    word = state["bert.embeddings.word_embeddings.weight"]
    # fairseq specials map to BERT's, pieces to themselves, the extra last row to [MASK].
    expected_ids = [vocab.index({"<s>": "[CLS]", "<pad>": "[PAD]", "</s>": "[SEP]", "<unk>": "[UNK]"}.get(s, s))
                    if s in vocab or s in ("<s>", "<pad>", "</s>", "<unk>") else vocab.index("[UNK]")
                    for s in d.symbols] + [vocab.index("[MASK]")]
    assert model.bert_ids.tolist() == expected_ids
    assert model.mask_idx == len(d) == model.output_projection.weight.size(0)
    assert torch.equal(model.embeddings.word_embeddings.weight, word[expected_ids])
    assert torch.equal(model.output_projection.weight, word[expected_ids[:-1]])
    assert torch.count_nonzero(model.output_projection.bias) == 0
    assert torch.equal(model.transform.dense.weight, state["cls.predictions.transform.dense.weight"])
    assert torch.equal(model.transform.LayerNorm.bias, state["cls.predictions.transform.LayerNorm.bias"])
    assert torch.equal(model.encoder.layer[1].output.dense.weight, state["bert.encoder.layer.1.output.dense.weight"])

    # [CLS] a3 a5 [SEP] b5 [MASK] [SEP], computed directly from the HF tensors.
    src = torch.tensor([[d.index("a3"), d.index("a5"), d.eos()]])
    tgt = torch.tensor([[d.index("b5"), model.mask_idx, d.eos()]])
    bert_ids = [vocab.index(p) for p in ("[CLS]", "a3", "a5", "[SEP]", "b5", "[MASK]", "[SEP]")]
    ref = reference_bert(state, config, torch.tensor(bert_ids), torch.tensor([0, 0, 0, 0, 1, 1, 1]))
    with torch.no_grad():
        hidden = model.encode(src, tgt)[0]  # T x H
        logits = model(src, None, tgt)[0][0]  # T x V
    assert torch.allclose(hidden, ref[4:], atol=1e-5)
    h = F.layer_norm(
        F.gelu(ref[4:] @ state["cls.predictions.transform.dense.weight"].T + state["cls.predictions.transform.dense.bias"]),
        (config["hidden_size"],), state["cls.predictions.transform.LayerNorm.weight"],
        state["cls.predictions.transform.LayerNorm.bias"], config["layer_norm_eps"],
    )
    assert torch.allclose(logits, h @ word[expected_ids[:-1]].T, atol=1e-4)


def test_import_without_head_initializes_it_and_says_so(tmp_path, caplog):
    bert_dir, data_bin = utils.make_bert_task(str(tmp_path), n_train=20, with_head=False)
    with caplog.at_level(logging.INFO, logger="fairseq_kd.models.bert_teacher"):
        _, model = build(data_bin, bert_dir)
    assert "no masked-LM head in the checkpoint: head transform initialized" in caplog.text
    assert torch.equal(model.transform.LayerNorm.weight, torch.ones_like(model.transform.LayerNorm.weight))
    assert torch.count_nonzero(model.transform.dense.bias) == 0
    state = raw_state(bert_dir)
    assert torch.equal(model.encoder.layer[0].attention.self.key.weight, state["encoder.layer.0.attention.self.key.weight"])


def test_pytorch_model_bin_imports_like_safetensors(bert_task, tmp_path):
    bert_dir, data_bin = bert_task
    words = [f"a{i}" for i in range(12)] + [f"b{i}" for i in range(12)]
    bin_dir = bert_io.write_checkpoint(str(tmp_path / "bin_bert"), words, safetensors=False)
    _, a = build(data_bin, bert_dir)
    _, b = build(data_bin, bin_dir)
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k


def test_padding_and_batching_do_not_change_logits(bert_task):
    bert_dir, data_bin = bert_task
    task, model = build(data_bin, bert_dir)
    d, pad, M = task.target_dictionary, task.target_dictionary.pad(), model.mask_idx
    s1, t1 = [d.index("a1"), d.eos()], [d.index("b1"), M, d.eos()]
    s2, t2 = [d.index("a2"), d.index("a4"), d.index("a6"), d.eos()], [M, d.index("b4"), d.index("b2"), M, d.eos()]
    with torch.no_grad():
        alone = model(torch.tensor([s1]), None, torch.tensor([t1]))[0][0]
        # left-padded source (fairseq's default), right-padded target
        src = torch.tensor([[pad, pad] + s1, s2])
        tgt = torch.tensor([t1 + [pad, pad], t2])
        batched = model(src, None, tgt)[0]
        chosen = model(src, None, tgt, positions=tgt.eq(M))[0]  # N x V
    assert torch.allclose(batched[0, :3], alone, atol=1e-5)
    assert torch.allclose(chosen, batched[tgt.eq(M)], atol=1e-6)


def test_l2r_target_slots_do_not_see_later_target_words(bert_task):
    bert_dir, data_bin = bert_task
    task, l2r = build(data_bin, bert_dir, arch="bert_teacher_l2r")
    _, bidi = build(data_bin, bert_dir)
    assert l2r.causal_target and not bidi.causal_target
    d = task.target_dictionary
    src = torch.tensor([[d.index("a1"), d.index("a2"), d.eos()]])
    t_a = torch.tensor([[d.index("b2"), l2r.mask_idx, d.index("b1"), d.eos()]])
    t_b = torch.tensor([[d.index("b2"), l2r.mask_idx, d.index("b7"), d.eos()]])  # a later word changed
    with torch.no_grad():
        la, lb = l2r(src, None, t_a)[0], l2r(src, None, t_b)[0]
        ba, bb = bidi(src, None, t_a)[0], bidi(src, None, t_b)[0]
    assert torch.allclose(la[0, :2], lb[0, :2], atol=1e-6)  # slots 0, 1 blind to slot 2
    assert not torch.allclose(la[0, 2:], lb[0, 2:], atol=1e-4)
    assert not torch.allclose(ba[0, :2], bb[0, :2], atol=1e-4)  # bidirectional sees it


def test_small_arch_and_bert_layers_keep_the_first_layers(bert_task):
    bert_dir, data_bin = bert_task
    _, small = build(data_bin, bert_dir, arch="bert_teacher_small")  # 6 > 2 available: all kept
    assert len(small.encoder.layer) == 2
    _, one = build(data_bin, bert_dir, extra=["--bert-layers", "1"])
    assert len(one.encoder.layer) == 1
    state = raw_state(bert_dir)
    assert torch.equal(one.encoder.layer[0].output.dense.weight, state["bert.encoder.layer.0.output.dense.weight"])


@pytest.mark.parametrize("broken,message", [
    ("no_config", "config.json not found"),
    ("bad_config", "config.json is not valid JSON"),
    ("config_field", "config.json has no 'hidden_size'"),
    ("no_vocab", "vocab.txt not found"),
    ("no_weights", "has no weights: expected model.safetensors or pytorch_model.bin"),
    ("bad_weights", "model.safetensors could not be read"),
])
def test_broken_checkpoints_name_the_file(bert_task, tmp_path, broken, message):
    bert_dir, data_bin = bert_task
    words = [f"a{i}" for i in range(12)] + [f"b{i}" for i in range(12)]
    path = bert_io.write_checkpoint(str(tmp_path / "b"), words)
    if broken == "no_config":
        os.remove(os.path.join(path, "config.json"))
    elif broken == "bad_config":
        open(os.path.join(path, "config.json"), "w").write("{not json")
    elif broken == "config_field":
        config = json.load(open(os.path.join(path, "config.json")))
        del config["hidden_size"]
        json.dump(config, open(os.path.join(path, "config.json"), "w"))
    elif broken == "no_vocab":
        os.remove(os.path.join(path, "vocab.txt"))
    elif broken == "no_weights":
        os.remove(os.path.join(path, "model.safetensors"))
    elif broken == "bad_weights":
        open(os.path.join(path, "model.safetensors"), "wb").write(b"garbage")
    with pytest.raises(bert_io.BertCheckpointError, match=message) as error:
        build(data_bin, path)
    assert path in str(error.value)
