"""``--arch bilstm_classifier``: the BiLSTM student of Tang et al. (2019).

Tang, Lu, Liu, Mou, Vechtomova, Lin (2019), Distilling Task-Specific Knowledge
from BERT into Simple Neural Networks, Section 3.1:

    single sentence:  h = [h_fwd(T), h_bwd(1)]          (one BiLSTM layer, no attention)
                      z = W2 ReLU(W1 h + b1) + b2       (logits)
    sentence pair:    h1, h2 = BiLSTM(s1), BiLSTM(s2)   (siamese: one shared encoder)
                      f(h1, h2) = [h1, h2, h1 * h2, |h1 - h2|]
                      z = W2 ReLU(W1 f + b1) + b2

Word embeddings may be initialized from a word-vector text file (word2vec,
fastText ``.vec`` or GloVe format). Architectures give the paper's sizes:
``bilstm_classifier`` (150 LSTM units, 200 ReLU units: SST-2) and
``bilstm_classifier_300`` (300 and 400: the sentence-pair tasks, siamese with
``--siamese``; ``bilstm_classifier_siamese`` is that preset).

Works with fairseq's ``sentence_prediction`` task (and ``sentence_prediction_kd``):
the task calls :meth:`register_classification_head` and the criterion calls
``model(**net_input, features_only=True, classification_head_name=...)``, as
for RoBERTa. The ReLU layer and the logits are the classification head.

Inputs are fairseq's binarized sentences: ``input0`` (and ``input1`` for pairs)
each end with ``</s>``, and the task concatenates a pair (with an optional
``--init-token`` and ``--separator-token``). The model drops ``<s>``/``</s>``/pad
and, with ``--siamese``, splits the pair at its first ``</s>``, so it needs no
task option to find the two sentences.
"""
import logging
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.models import BaseFairseqModel, register_model, register_model_architecture

from ..data import word_vectors
from ..errors import MissingFileError

logger = logging.getLogger(__name__)


def read_word_vectors(path: str, dictionary, embed_dim: int) -> Tuple[Dict[int, torch.Tensor], int]:
    """Vectors of the dictionary's words from a word-vector text file
    (:func:`fairseq_kd.data.word_vectors.read_word_vectors`: word2vec / fastText
    ``.vec`` with a ``count dim`` first line, GloVe without). Returns
    ``({dictionary index: D-vector}, number of vectors in the file)``; raises
    ValueError naming the file and line when a vector does not have ``embed_dim``
    values."""
    if not os.path.isfile(path):
        raise MissingFileError(f"--embed-path: word-vector file not found: {path}")
    vectors, found, n_vectors = word_vectors.read_word_vectors(path, dictionary.symbols, embed_dim, "--embed-dim")
    return {int(i): vectors[i] for i in np.flatnonzero(found)}, n_vectors


def concat_compare(h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
    """Tang et al. (2019) eq. 3: f(h1, h2) = [h1, h2, h1 * h2, |h1 - h2|], B x 4D."""
    return torch.cat([h1, h2, h1 * h2, (h1 - h2).abs()], dim=-1)


def split_segments(src_tokens: torch.Tensor, specials: List[int], eos: int, pad: int, n_segments: int):
    """Left-aligned word tokens of each segment, without special tokens.

    Args:
        src_tokens: B x T right-padded ids; segments end with ``eos``.
        specials: ids dropped from every segment (bos, eos, pad).
        n_segments: 1 (everything is one sentence) or 2 (split at the first eos).

    Returns:
        a list of ``n_segments`` pairs (B x T' ids, B lengths >= 1); an empty
        segment is one pad token (its embedding is zero).
    """
    is_special = torch.zeros_like(src_tokens, dtype=torch.bool)
    for s in specials:
        is_special |= src_tokens.eq(s)
    if n_segments == 1:
        segment_of = torch.zeros_like(src_tokens)
    else:
        # 0 up to and including the first eos, 1 after it
        segment_of = (src_tokens.eq(eos).long().cumsum(1) - src_tokens.eq(eos).long()).clamp(max=1)
    out = []
    for k in range(n_segments):
        keep = (~is_special) & segment_of.eq(k)  # B x T
        lengths = keep.sum(1)  # B
        # Stable sort moves kept positions to the front in their original order.
        order = torch.sort((~keep).long(), dim=1, stable=True).indices
        tokens = src_tokens.gather(1, order)
        width = max(int(lengths.max()) if lengths.numel() else 0, 1)
        tokens = tokens[:, :width].clone()
        positions = torch.arange(width, device=tokens.device).unsqueeze(0)
        tokens[positions >= lengths.unsqueeze(1)] = pad
        out.append((tokens, lengths.clamp(min=1)))
    return out


class BiLSTMEncoder(nn.Module):
    """Embeddings and one BiLSTM layer: B x T ids -> B x 2H sentence vectors."""

    def __init__(self, num_embeddings: int, embed_dim: int, hidden_size: int, padding_idx: int, dropout: float):
        super().__init__()
        self.embed_tokens = nn.Embedding(num_embeddings, embed_dim, padding_idx=padding_idx)
        self.lstm = nn.LSTM(embed_dim, hidden_size, num_layers=1, bidirectional=True, batch_first=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.embed_tokens(tokens))  # B x T x E
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)  # 2 x B x H: last forward state, first backward state
        return torch.cat([h_n[0], h_n[1]], dim=-1)  # B x 2H


class BiLSTMClassificationHead(nn.Module):
    """The ReLU hidden layer and the logits: B x D features -> B x C."""

    def __init__(self, input_dim: int, inner_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(input_dim, inner_dim)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(inner_dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(F.relu(self.dense(features))))


@register_model("bilstm_classifier")
class BiLSTMClassifierModel(BaseFairseqModel):
    def __init__(self, args, encoder: BiLSTMEncoder, dictionary):
        super().__init__()
        self.args = args
        self.encoder = encoder
        self.classification_heads = nn.ModuleDict()
        self.n_segments = 2 if args.siamese else 1
        self.pad, self.eos = dictionary.pad(), dictionary.eos()
        self.specials = sorted({dictionary.bos(), dictionary.eos(), dictionary.pad()})

    @staticmethod
    def add_args(parser):
        parser.add_argument("--embed-dim", type=int, metavar="D", help="word embedding dimension")
        parser.add_argument(
            "--embed-path", type=str, metavar="FILE",
            help="word-vector text file (word2vec, fastText .vec or GloVe format) to initialize "
            "the embeddings of the dictionary's words; others keep their random initialization",
        )
        parser.add_argument("--freeze-embed", action="store_true", help="do not train the word embeddings")
        parser.add_argument("--lstm-hidden-size", type=int, metavar="H", help="LSTM units per direction")
        parser.add_argument(
            "--classifier-hidden-size", type=int, metavar="N", help="units of the ReLU layer before the logits"
        )
        parser.add_argument("--dropout", type=float, metavar="P", help="dropout on embeddings and the ReLU layer")
        parser.add_argument(
            "--siamese", action="store_true",
            help="sentence pairs: encode input0 and input1 with the shared BiLSTM and classify "
            "[h1, h2, h1*h2, |h1-h2|]",
        )

    @classmethod
    def build_model(cls, args, task):
        base_architecture(args)
        dictionary = task.source_dictionary
        encoder = BiLSTMEncoder(
            len(dictionary), args.embed_dim, args.lstm_hidden_size, dictionary.pad(), args.dropout
        )
        if args.embed_path:
            nn.init.normal_(encoder.embed_tokens.weight, mean=0, std=args.embed_dim**-0.5)
            vectors, n_lines = read_word_vectors(args.embed_path, dictionary, args.embed_dim)
            with torch.no_grad():
                for idx, vector in vectors.items():
                    encoder.embed_tokens.weight[idx] = vector
                encoder.embed_tokens.weight[dictionary.pad()] = 0
            logger.info(
                f"embeddings: {len(vectors)} of {len(dictionary)} dictionary words found in "
                f"{args.embed_path} ({n_lines} vectors)"
            )
        if args.freeze_embed:
            encoder.embed_tokens.weight.requires_grad_(False)
        return cls(args, encoder, dictionary)

    def feature_dim(self) -> int:
        return 2 * self.args.lstm_hidden_size * (4 if self.n_segments == 2 else 1)

    def register_classification_head(self, name, num_classes=None, inner_dim=None, **kwargs):
        """Same interface as RobertaModel's, called by the sentence_prediction task."""
        self.classification_heads[name] = BiLSTMClassificationHead(
            self.feature_dim(), inner_dim or self.args.classifier_hidden_size, num_classes, self.args.dropout
        )

    def extract_features(self, src_tokens: torch.Tensor) -> torch.Tensor:
        """B x T ids -> B x 2H (single) or B x 8H (pair: concatenate-compare)."""
        segments = split_segments(src_tokens, self.specials, self.eos, self.pad, self.n_segments)
        states = [self.encoder(tokens, lengths) for tokens, lengths in segments]
        return states[0] if len(states) == 1 else concat_compare(states[0], states[1])

    def forward(
        self,
        src_tokens: torch.Tensor,
        src_lengths: Optional[torch.Tensor] = None,
        features_only: bool = False,
        classification_head_name: Optional[str] = None,
        **kwargs,
    ):
        """Returns (logits B x C, {"features": B x D}); with no head name, (features, {})."""
        features = self.extract_features(src_tokens)
        if classification_head_name is None:
            return features, {}
        return self.classification_heads[classification_head_name](features), {"features": features}

    def max_positions(self):
        return None  # no positional limit

    def upgrade_state_dict_named(self, state_dict, name):
        """Register heads that a checkpoint holds but the task did not (e.g. another task)."""
        prefix = name + "." if name else ""
        for key in list(state_dict.keys()):
            if key.startswith(prefix + "classification_heads.") and key.endswith(".out_proj.weight"):
                head = key[len(prefix + "classification_heads."): -len(".out_proj.weight")]
                if head not in self.classification_heads:
                    num_classes, inner_dim = state_dict[key].shape
                    self.register_classification_head(head, num_classes=num_classes, inner_dim=inner_dim)
        super().upgrade_state_dict_named(state_dict, name)


@register_model_architecture("bilstm_classifier", "bilstm_classifier")
def base_architecture(args):
    """Tang et al. (2019), SST-2: 300-d word2vec embeddings, 150 LSTM units, 200 ReLU units."""
    args.embed_dim = getattr(args, "embed_dim", None) or 300
    args.embed_path = getattr(args, "embed_path", None)
    args.freeze_embed = getattr(args, "freeze_embed", False)
    args.lstm_hidden_size = getattr(args, "lstm_hidden_size", None) or 150
    args.classifier_hidden_size = getattr(args, "classifier_hidden_size", None) or 200
    dropout = getattr(args, "dropout", None)
    args.dropout = 0.1 if dropout is None else dropout
    args.siamese = getattr(args, "siamese", False)


@register_model_architecture("bilstm_classifier", "bilstm_classifier_300")
def bilstm_classifier_300(args):
    """Tang et al. (2019), sentence-pair tasks: 300 LSTM units, 400 ReLU units."""
    args.lstm_hidden_size = getattr(args, "lstm_hidden_size", None) or 300
    args.classifier_hidden_size = getattr(args, "classifier_hidden_size", None) or 400
    base_architecture(args)


@register_model_architecture("bilstm_classifier", "bilstm_classifier_siamese")
def bilstm_classifier_siamese(args):
    """The 300/400 sizes with the siamese pair encoder (MNLI, QQP in the paper)."""
    args.siamese = True
    bilstm_classifier_300(args)
