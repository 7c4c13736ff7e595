"""``--arch bert_classifier_base``: a BERT encoder with sentence classification heads.

The teacher of Tang, Lu, Liu, Mou, Vechtomova, Lin (2019), Distilling
Task-Specific Knowledge from BERT into Simple Neural Networks: BERT fine-tuned
on the task as in Devlin et al. (2019),

    z = W_o dropout(tanh(W_d h_[CLS] + b_d)) + b_o,     p(c | x) = softmax(z)_c

where h_[CLS] is the final hidden state of [CLS], W_d starts from BERT's pooler
(``pooler.dense``) when the checkpoint has one, and z are the logits that
``fairseq-kd-dump-logits`` stores for the student.

It is trained with fairseq's own ``--task sentence_prediction --criterion
sentence_prediction``: the model has RoBERTa's interface (``classification_heads``,
``register_classification_head``, ``forward(src_tokens, features_only=True,
classification_head_name=...)``). The task feeds ``a </s>`` for single sentences
and ``a </s> b </s>`` for pairs (``--separator-token 2`` makes it ``a </s> </s>
b </s>``, ``--init-token 0`` adds a leading ``<s>``); the model lays every row
out as BERT's

    [CLS] a [SEP] (b [SEP])      segment ids 0 .. 0 (1 .. 1)

dropping ``<s>``, prepending [CLS] and collapsing a doubled separator, so any
of these options gives the same input.

Input rows follow the task's dictionary (WordPiece text), each initialized from
BERT's embedding of that piece, as in ``bert_teacher``. A dictionary of BERT's
whole vocabulary (``fairseq-kd-bert-tokenize --dict-out``, then
``fairseq-preprocess --srcdict``) keeps every piece's embedding, including
those of words seen only at test time. This is a model of its own rather than
a ``bert_teacher`` arch: it has no masked-LM output layer (a vocabulary-sized
matrix that classification would never train and DDP would flag as unused).
"""
import logging
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.models import register_model, register_model_architecture

from ..data import bert_io
from .bert_teacher import BertEncoderModel, _set_defaults

logger = logging.getLogger(__name__)


class BertClassificationHead(nn.Module):
    """BERT's pooler and classifier over [CLS]: dense -> tanh -> dropout -> out_proj."""

    def __init__(self, input_dim: int, inner_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(input_dim, inner_dim)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(inner_dim, num_classes)

    def forward(self, features, **kwargs):
        x = features[:, 0, :]  # B x H: the [CLS] state
        return self.out_proj(self.dropout(torch.tanh(self.dense(x))))  # B x C


@register_model("bert_classifier")
class BertClassifierModel(BertEncoderModel):
    def __init__(self, args, config: Dict, dictionary):
        super().__init__(args, config, dictionary, rows=len(dictionary))
        self.classification_heads = nn.ModuleDict()
        self.register_buffer("bert_ids", torch.zeros(len(dictionary), dtype=torch.long))
        self.apply(self._init_weights)
        # BERT's pooler (pooler.dense.weight / .bias) from the import, to initialize
        # heads registered afterwards; not a parameter, not saved.
        self.pooler_init: Optional[Dict[str, torch.Tensor]] = None

    # ------------------------------------------------------------- options
    @staticmethod
    def add_args(parser):
        BertEncoderModel.add_args(parser)
        parser.add_argument("--pooler-dropout", type=float, metavar="D",
                            help="dropout in the classification heads (default: the hidden dropout)")
        parser.add_argument("--load-checkpoint-heads", action="store_true",
                            help="(re-)register the classification heads found in a loaded checkpoint")

    @classmethod
    def build_model(cls, args, task):
        bert_classifier_base(args)
        config, from_checkpoint = cls.read_bert_config(args, "bert_classifier")
        model = cls(args, config, task.source_dictionary)
        if not from_checkpoint:
            model.import_bert(args.bert_path, task.source_dictionary)
        return model

    def import_bert(self, path: str, dictionary) -> None:
        """Copy a Hugging Face BERT checkpoint's encoder (and keep its pooler)."""
        symbols = [bert_io.FAIRSEQ_TO_BERT_SPECIALS.get(s, s) for s in dictionary.symbols]
        state, _, file, n_unk = self.import_encoder(path, symbols)
        H = self.config["hidden_size"]
        pooler = {k[len("pooler.dense."):]: v for k, v in state.items() if k.startswith("pooler.dense.")}
        if set(pooler) == {"weight", "bias"}:
            if tuple(pooler["weight"].shape) != (H, H) or tuple(pooler["bias"].shape) != (H,):
                raise bert_io.BertCheckpointError(
                    f"{file}: pooler.dense.weight has shape {tuple(pooler['weight'].shape)}, "
                    f"config.json implies {(H, H)}"
                )
            self.pooler_init = pooler
            pooler_msg = "pooler imported (initializes the classification heads)"
        else:
            pooler_msg = "no pooler in the checkpoint: classification heads start random"
        logger.info(
            f"imported BERT from {path}: {self.config['num_hidden_layers']} layers, hidden {H}; "
            f"{len(symbols) - n_unk} of {len(symbols)} dictionary symbols found in vocab.txt "
            f"({n_unk} mapped to [UNK]); {pooler_msg}"
        )

    def register_classification_head(self, name, num_classes=None, inner_dim=None, **kwargs):
        """Add (or replace) head ``name``: inner_dim defaults to the hidden size,
        and then the dense layer starts from BERT's pooler when it was imported."""
        H = self.config["hidden_size"]
        inner_dim = inner_dim or H
        if name in self.classification_heads:
            prev = self.classification_heads[name]
            if num_classes != prev.out_proj.out_features or inner_dim != prev.dense.out_features:
                logger.warning(
                    f"re-registering head {name!r} with num_classes {num_classes} (prev: "
                    f"{prev.out_proj.out_features}) and inner_dim {inner_dim} (prev: {prev.dense.out_features})"
                )
        dropout = self.args.pooler_dropout
        if dropout is None:
            dropout = self.config["hidden_dropout_prob"]
        head = BertClassificationHead(H, inner_dim, num_classes, dropout)
        head.apply(self._init_weights)
        if self.pooler_init is not None and inner_dim == H:
            with torch.no_grad():
                head.dense.weight.copy_(self.pooler_init["weight"])
                head.dense.bias.copy_(self.pooler_init["bias"])
        param = next(self.parameters())
        self.classification_heads[name] = head.to(device=param.device, dtype=param.dtype)

    def max_positions(self):
        # [CLS] may be prepended to what the task feeds.
        return self.max_total_positions - 1

    # ------------------------------------------------------------- forward
    def layout(self, src_tokens):
        """BERT's ``[CLS] a [SEP] (b [SEP])`` rows from what sentence_prediction feeds
        (padded on either side; ``<s>`` dropped, doubled ``</s>`` collapsed).

        Returns ids B x L (right-padded), segments B x L (1 after the first [SEP])
        and allowed B x 1 x 1 x L (True on real tokens: keys that may be attended).
        """
        B = src_tokens.size(0)
        device = src_tokens.device
        is_eos = src_tokens.eq(self.eos)
        after_eos = F.pad(is_eos[:, :-1], (1, 0), value=False)
        keep = src_tokens.ne(self.pad) & src_tokens.ne(self.bos) & ~(is_eos & after_eos)  # B x S
        length = keep.sum(1) + 1  # B, with [CLS]
        L = int(length.max())
        if L > self.max_total_positions:
            raise ValueError(f"[CLS] input is {L} tokens, BERT has {self.max_total_positions} positions")
        ids = src_tokens.new_full((B, L), self.pad)
        ids[:, 0] = self.bos
        rows = torch.arange(B, device=device).unsqueeze(1).expand_as(keep)
        ids[rows[keep], keep.long().cumsum(1)[keep]] = src_tokens[keep]  # 1.. after [CLS]
        sep = ids.eq(self.eos).long()
        segments = ((sep.cumsum(1) - sep) > 0).long().clamp(max=self.config["type_vocab_size"] - 1)
        allowed = (torch.arange(L, device=device).unsqueeze(0) < length.unsqueeze(1))  # B x L
        return ids, segments * allowed, allowed[:, None, None, :]

    def extract_features(self, src_tokens, **kwargs):
        """Final hidden states B x L x H of the ``[CLS] ...`` layout (row 0 is [CLS])."""
        ids, segments, allowed = self.layout(src_tokens)
        return self.run_encoder(ids, segments, allowed)

    def forward(self, src_tokens, src_lengths=None, features_only: bool = False,
                return_all_hiddens: bool = False, classification_head_name: Optional[str] = None, **kwargs):
        """``(logits B x C, extra)`` with ``classification_head_name``, else
        ``(features B x L x H, extra)``; ``extra["padding_mask"]`` is B x L."""
        if classification_head_name is None and not features_only:
            raise ValueError("bert_classifier has no language-model output: pass features_only=True "
                             "or a classification_head_name")
        ids, segments, allowed = self.layout(src_tokens)
        x = self.run_encoder(ids, segments, allowed)
        extra = {"padding_mask": ids.eq(self.pad)}
        if classification_head_name is not None:
            x = self.classification_heads[classification_head_name](x)
        return x, extra

    # ------------------------------------------------------------- loading
    def upgrade_state_dict_named(self, state_dict, name):
        """Let checkpoints with other heads load (as RobertaModel does): heads the
        model lacks are dropped (or registered with --load-checkpoint-heads),
        heads of other sizes dropped, and the model's own missing heads kept."""
        prefix = name + "." if name != "" else ""
        super().upgrade_state_dict_named(state_dict, name)
        head_prefix = prefix + "classification_heads."
        in_checkpoint = {k[len(head_prefix):].split(".")[0] for k in state_dict if k.startswith(head_prefix)}
        drop = []
        for head_name in sorted(in_checkpoint):
            num_classes = state_dict[f"{head_prefix}{head_name}.out_proj.weight"].size(0)
            inner_dim = state_dict[f"{head_prefix}{head_name}.dense.weight"].size(0)
            current = self.classification_heads[head_name] if head_name in self.classification_heads else None
            if current is None and getattr(self.args, "load_checkpoint_heads", False):
                self.register_classification_head(head_name, num_classes, inner_dim)
            elif current is None:
                logger.warning(f"deleting classification head {head_name!r} of the checkpoint: not in the model")
                drop.append(head_name)
            elif (num_classes, inner_dim) != (current.out_proj.out_features, current.dense.out_features):
                logger.warning(f"deleting classification head {head_name!r} of the checkpoint: other dimensions "
                               f"({num_classes} classes, inner {inner_dim}) than the model's")
                drop.append(head_name)
        for k in [k for k in state_dict if k.startswith(head_prefix) and k[len(head_prefix):].split(".")[0] in drop]:
            del state_dict[k]
        for k, v in self.classification_heads.state_dict().items():
            if head_prefix + k not in state_dict:
                logger.info(f"keeping the model's own {head_prefix + k} (not in the checkpoint)")
                state_dict[head_prefix + k] = v


@register_model_architecture("bert_classifier", "bert_classifier_base")
def bert_classifier_base(args):
    """All layers of the checkpoint, sizes from its config.json."""
    _set_defaults(args, bert_path=None, bert_layers=0, dropout=None, attention_dropout=None,
                  bert_config=None, pooler_dropout=None, load_checkpoint_heads=False)
