"""``--arch bert_teacher_*``: a BERT encoder fine-tuned as a Conditional Masked LM teacher.

Chen, Gan, Cheng, Liu, Liu (2020), Distilling Knowledge Learned in BERT for
Text Generation (ACL). The teacher reads

    [CLS] x_1 .. x_m [SEP] y_1 .. y_n [SEP]      segment ids 0 .. 0 1 .. 1

with some target slots replaced by [MASK] and predicts, at each masked slot t
(the final [SEP] slot included, which predicts </s>),

    p(y_t | x, y_{\\t}) = softmax(W h_t + b),   h_t = LN(gelu(D e_t))  (BERT's MLM transform)

over the fairseq target dictionary, so its top-K ids are student ids.

One fairseq dictionary (``fairseq-preprocess --joined-dictionary`` on WordPiece
text, see ``fairseq-kd-bert-tokenize``) is shared by source, target, teacher and
student. The input embedding has one row per dictionary symbol plus a last
row for [MASK] (id ``len(dictionary)``, outside the dictionary so that the
student's dictionary is unchanged), each initialized from BERT's embedding of
that piece; the buffer ``bert_ids`` keeps which BERT id each row came from
(fairseq's <s>, <pad>, </s>, <unk> are [CLS], [PAD], [SEP], [UNK]). The output
layer's rows are initialized from the same embeddings, with zero bias.

Architectures: ``bert_teacher_base`` (sizes from ``config.json``),
``bert_teacher_small`` (its first 6 layers: the paper's 6-layer ablation) and
``bert_teacher_l2r`` (target slots attend only to the source and to earlier
target slots: the left-to-right ablation).

The Hugging Face import and the encoder live in ``BertEncoderModel``, which
``bert_classifier`` (the sentence classifier teacher of Tang et al. 2019)
shares.
"""
import json
import logging
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.models import BaseFairseqModel, register_model, register_model_architecture

from ..data import bert_io
from ..errors import UsageError

logger = logging.getLogger(__name__)


def _activation(name: str):
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise UsageError(f"unsupported hidden_act {name!r} in the BERT config")


# Module names follow Hugging Face's BertModel so that weights load by name.
class BertEmbeddings(nn.Module):
    def __init__(self, rows, config):
        super().__init__()
        H = config["hidden_size"]
        self.word_embeddings = nn.Embedding(rows, H)
        self.position_embeddings = nn.Embedding(config["max_position_embeddings"], H)
        self.token_type_embeddings = nn.Embedding(config["type_vocab_size"], H)
        self.LayerNorm = nn.LayerNorm(H, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])

    def forward(self, ids, segments):
        positions = torch.arange(ids.size(1), device=ids.device)
        x = self.word_embeddings(ids) + self.position_embeddings(positions) + self.token_type_embeddings(segments)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        H = config["hidden_size"]
        self.heads = config["num_attention_heads"]
        self.query, self.key, self.value = nn.Linear(H, H), nn.Linear(H, H), nn.Linear(H, H)
        self.dropout_p = config["attention_probs_dropout_prob"]

    def forward(self, x, allowed):
        B, L, H = x.shape

        def split(t):  # B x heads x L x H/heads
            return t.view(B, L, self.heads, H // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout_p if self.training else 0.0
        )
        return out.transpose(1, 2).reshape(B, L, H)


class BertSelfOutput(nn.Module):
    def __init__(self, config, inner):
        super().__init__()
        self.dense = nn.Linear(inner, config["hidden_size"])
        self.LayerNorm = nn.LayerNorm(config["hidden_size"], eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])

    def forward(self, h, residual):
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config, config["hidden_size"])


class BertIntermediate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config["hidden_size"], config["intermediate_size"])
        self.act = _activation(config["hidden_act"])

    def forward(self, x):
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    """Post-LayerNorm Transformer layer, as in BERT."""

    def __init__(self, config):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertSelfOutput(config, config["intermediate_size"])

    def forward(self, x, allowed):
        x = self.attention.output(self.attention.self(x, allowed), x)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config["num_hidden_layers"])])


class MLMTransform(nn.Module):
    """BERT's ``cls.predictions.transform``: dense, activation, LayerNorm."""

    def __init__(self, config):
        super().__init__()
        H = config["hidden_size"]
        self.dense = nn.Linear(H, H)
        self.act = _activation(config["hidden_act"])
        self.LayerNorm = nn.LayerNorm(H, eps=config["layer_norm_eps"])

    def forward(self, x):
        return self.LayerNorm(self.act(self.dense(x)))


class BertEncoderModel(BaseFairseqModel):
    """BERT's embeddings and encoder, built from (and initialized by) a Hugging
    Face checkpoint; not registered. ``bert_teacher`` (C-MLM) and
    ``bert_classifier`` (sentence classification) add their output layers.

    The input embedding has one row per entry of ``symbols`` (fairseq dictionary
    symbols, their specials mapped to BERT's), each initialized from BERT's
    embedding of that piece; the buffer ``bert_ids`` keeps which BERT id each
    row came from.
    """

    def __init__(self, args, config: Dict, dictionary, rows: int):
        super().__init__()
        self.args = args
        self.config = config
        self.pad = dictionary.pad()
        self.bos = dictionary.bos()
        self.eos = dictionary.eos()
        self.max_total_positions = config["max_position_embeddings"]
        self.embeddings = BertEmbeddings(rows, config)
        self.encoder = BertEncoder(config)

    @staticmethod
    def _init_weights(module):
        # BERT's initialization, for whatever the checkpoint does not provide.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, 0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
        if isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    # ------------------------------------------------------------- options
    @staticmethod
    def add_args(parser):
        parser.add_argument("--bert-path", type=str, metavar="DIR",
                            help="Hugging Face BERT checkpoint directory (config.json, vocab.txt, "
                                 "model.safetensors or pytorch_model.bin) to initialize from")
        parser.add_argument("--bert-layers", type=int, metavar="N",
                            help="keep only the first N encoder layers (0 = all)")
        parser.add_argument("--dropout", type=float, metavar="D",
                            help="hidden dropout (default: the checkpoint's hidden_dropout_prob)")
        parser.add_argument("--attention-dropout", type=float, metavar="D",
                            help="attention dropout (default: the checkpoint's attention_probs_dropout_prob)")
        parser.add_argument("--bert-config", type=str, metavar="JSON",
                            help="the encoder's sizes as JSON; filled in from --bert-path/config.json "
                                 "when the model is first built, so a trained checkpoint needs no --bert-path")

    @staticmethod
    def read_bert_config(args, arch: str):
        """``(config, from_checkpoint)``: the stored config of a saved model, else
        ``--bert-path``'s config.json with ``--bert-layers`` / dropout applied
        (then stored in ``args.bert_config`` for the checkpoint)."""
        if args.bert_config:  # rebuilt from a saved model: weights follow
            return json.loads(args.bert_config), True
        if not args.bert_path:
            raise UsageError(f"--arch {arch}_* needs --bert-path DIR (a Hugging Face BERT checkpoint)")
        config = bert_io.read_config(args.bert_path)
        available = config["num_hidden_layers"]
        if args.bert_layers and args.bert_layers > available:
            logger.warning(f"--bert-layers {args.bert_layers}: the checkpoint has only {available}, using all")
        if args.bert_layers:
            config["num_hidden_layers"] = min(args.bert_layers, available)
        if args.dropout is not None:
            config["hidden_dropout_prob"] = args.dropout
        if args.attention_dropout is not None:
            config["attention_probs_dropout_prob"] = args.attention_dropout
        args.bert_config = json.dumps(config, sort_keys=True)
        return config, False

    def import_encoder(self, path: str, symbols):
        """Copy a Hugging Face BERT checkpoint's embeddings and encoder into this
        model, embedding row i from BERT's piece ``symbols[i]`` ([UNK] when the
        vocabulary lacks it). Returns ``(state, head, file, n_unk)``: the
        checkpoint's BertModel tensors, its masked-LM head (or None), the weights
        file and how many symbols fell back to [UNK]."""
        encoder, head, file = bert_io.read_state_dict(path)
        vocab = bert_io.read_vocab(path)
        piece_id = {p: i for i, p in enumerate(vocab)}
        unk = piece_id[bert_io.UNK]
        bert_ids = torch.tensor([piece_id.get(s, unk) for s in symbols], dtype=torch.long)
        n_unk = sum(1 for s in symbols if s not in piece_id)
        word = encoder["embeddings.word_embeddings.weight"]
        if word.size(0) != len(vocab):
            raise bert_io.BertCheckpointError(
                f"{file}: {word.size(0)} word embeddings but {len(vocab)} pieces in vocab.txt"
            )
        with torch.no_grad():
            self.bert_ids.copy_(bert_ids)
            rows = self.embeddings.word_embeddings.weight
            rows.copy_(word[bert_ids].to(rows.dtype))
        wanted = {k for k in self.state_dict() if k.startswith(("embeddings.", "encoder."))}
        wanted.discard("embeddings.word_embeddings.weight")
        missing = sorted(wanted - set(encoder))
        if missing:
            raise bert_io.BertCheckpointError(f"{file} lacks {len(missing)} tensors, e.g. {missing[0]}")
        own = self.state_dict()
        for key in wanted:
            if tuple(encoder[key].shape) != tuple(own[key].shape):
                raise bert_io.BertCheckpointError(
                    f"{file}: {key} has shape {tuple(encoder[key].shape)}, config.json implies {tuple(own[key].shape)}"
                )
        self.load_state_dict({k: encoder[k] for k in wanted}, strict=False)
        return encoder, head, file, n_unk

    def run_encoder(self, ids, segments, allowed):
        """Final hidden states B x L x H of ids / segments B x L; ``allowed``
        (True = may attend) broadcasts to B x 1 x L x L."""
        x = self.embeddings(ids, segments)  # B x L x H
        for layer in self.encoder.layer:
            x = layer(x, allowed)
        return x


@register_model("bert_teacher")
class BertTeacherModel(BertEncoderModel):
    def __init__(self, args, config: Dict, dictionary):
        super().__init__(args, config, dictionary, rows=len(dictionary) + 1)
        self.mask_idx = len(dictionary)  # one past the dictionary: input-only
        self.causal_target = bool(getattr(args, "causal_target", False))
        self.transform = MLMTransform(config)
        self.output_projection = nn.Linear(config["hidden_size"], len(dictionary))
        # Which BERT vocabulary id each input row was initialized from (provenance).
        self.register_buffer("bert_ids", torch.zeros(len(dictionary) + 1, dtype=torch.long))
        self.apply(self._init_weights)

    # ------------------------------------------------------------- options
    @staticmethod
    def add_args(parser):
        BertEncoderModel.add_args(parser)
        parser.add_argument("--causal-target", action="store_true",
                            help="target slots attend only to the source and earlier target slots "
                                 "(left-to-right ablation)")

    @classmethod
    def build_model(cls, args, task):
        bert_teacher_base(args)
        src_dict, dictionary = task.source_dictionary, task.target_dictionary
        if src_dict is not None and list(src_dict.symbols) != list(dictionary.symbols):
            raise UsageError(
                "bert_teacher needs one dictionary for source and target: binarize the "
                "WordPiece text with fairseq-preprocess --joined-dictionary"
            )
        config, from_checkpoint = cls.read_bert_config(args, "bert_teacher")
        model = cls(args, config, dictionary)
        if not from_checkpoint:
            model.import_bert(args.bert_path, dictionary)
        return model

    def import_bert(self, path: str, dictionary) -> None:
        """Copy a Hugging Face BERT checkpoint's weights into this model."""
        symbols = [bert_io.FAIRSEQ_TO_BERT_SPECIALS.get(s, s) for s in dictionary.symbols] + [bert_io.MASK]
        _, head, _, n_unk = self.import_encoder(path, symbols)
        with torch.no_grad():
            self.output_projection.weight.copy_(self.embeddings.word_embeddings.weight[:-1])
            self.output_projection.bias.zero_()
        if head is not None and all(f"transform.{k}" in head for k in ("dense.weight", "dense.bias", "LayerNorm.weight", "LayerNorm.bias")):
            self.transform.load_state_dict({k[len("transform."):]: v for k, v in head.items() if k.startswith("transform.")})
            head_msg = "masked-LM head transform imported"
        else:
            head_msg = "no masked-LM head in the checkpoint: head transform initialized"
        logger.info(
            f"imported BERT from {path}: {self.config['num_hidden_layers']} layers, hidden "
            f"{self.config['hidden_size']}; {len(symbols) - 1 - n_unk} of {len(symbols) - 1} dictionary "
            f"symbols found in vocab.txt ({n_unk} mapped to [UNK]); {head_msg}; output layer "
            f"rows from the embeddings, zero bias"
        )

    def max_positions(self):
        # [CLS] source target fits in BERT's position table.
        room = self.max_total_positions - 1
        return (room // 2, room - room // 2)

    # ------------------------------------------------------------- forward
    def layout(self, src_tokens, tgt_tokens):
        """Build ``[CLS] src tgt`` rows (source may be padded on either side,
        target right-padded; source and target each end with </s> = [SEP]).

        Returns ids B x L, segments B x L, allowed B x 1 x L x L (True = may
        attend) and tgt_positions B x T (the row index of each target slot).
        """
        pad = self.pad
        B, T = tgt_tokens.shape
        device = tgt_tokens.device
        src_mask, tgt_mask = src_tokens.ne(pad), tgt_tokens.ne(pad)
        src_len, tgt_len = src_mask.sum(1), tgt_mask.sum(1)  # B
        total = 1 + src_len + tgt_len
        L = int(total.max())
        if L > self.max_total_positions:
            raise ValueError(f"[CLS] source target is {L} tokens, BERT has {self.max_total_positions} positions")
        ids = tgt_tokens.new_full((B, L), pad)
        ids[:, 0] = self.bos
        rows = torch.arange(B, device=device).unsqueeze(1)
        src_pos = src_mask.long().cumsum(1)  # 1.. for source tokens
        ids[rows.expand_as(src_mask)[src_mask], src_pos[src_mask]] = src_tokens[src_mask]
        tgt_positions = (1 + src_len).unsqueeze(1) + torch.arange(T, device=device)  # B x T
        ids[rows.expand_as(tgt_mask)[tgt_mask], tgt_positions[tgt_mask]] = tgt_tokens[tgt_mask]
        index = torch.arange(L, device=device)
        segments = (index.unsqueeze(0) > src_len.unsqueeze(1)).long()  # 1 on target slots
        allowed = (index.unsqueeze(0) < total.unsqueeze(1)).unsqueeze(1)  # B x 1(query) x L(key)
        if self.causal_target:
            seg_q, seg_k = segments.unsqueeze(2), segments.unsqueeze(1)  # B x L x 1, B x 1 x L
            later = index.view(1, 1, L) > index.view(1, L, 1)  # key after query
            allowed = allowed & ~((seg_k == 1) & ((seg_q == 0) | later))
        else:
            allowed = allowed.expand(B, L, L)
        return ids, segments, allowed.unsqueeze(1), tgt_positions.clamp(max=L - 1)

    def encode(self, src_tokens, tgt_tokens):
        """Final hidden states of the target slots: B x T x H."""
        ids, segments, allowed, tgt_positions = self.layout(src_tokens, tgt_tokens)
        x = self.run_encoder(ids, segments, allowed)  # B x L x H
        return x.gather(1, tgt_positions.unsqueeze(-1).expand(-1, -1, x.size(-1)))

    def forward(self, src_tokens, src_lengths, tgt_tokens, positions: Optional[torch.Tensor] = None, **kwargs):
        """Logits over the target dictionary at the target slots.

        Args:
            src_tokens: B x S source ids (ending with </s>), padded.
            tgt_tokens: B x T target ids (ending with </s>), right-padded, masked
                slots holding ``self.mask_idx``.
            positions: optional B x T booleans; then only those slots are scored.

        Returns:
            ``(logits, extra)``: B x T x V logits, or N x V for the N selected
            positions in row-major order.
        """
        h = self.encode(src_tokens, tgt_tokens)  # B x T x H
        if positions is not None:
            h = h[positions]  # N x H
        return self.output_projection(self.transform(h)), {}

    def get_targets(self, sample, net_output):
        """The gold words of the scored slots. With ``positions`` (C-MLM
        batches) the logits are N x V for the masked slots in row-major order,
        which are exactly the non-pad entries of the B x T target."""
        target = sample["target"]
        if net_output[0].dim() == 2:
            return target[target.ne(self.pad)]
        return target

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        logits = net_output[0].float()
        return F.log_softmax(logits, dim=-1) if log_probs else F.softmax(logits, dim=-1)


def _set_defaults(args, **defaults):
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


@register_model_architecture("bert_teacher", "bert_teacher_base")
def bert_teacher_base(args):
    """All layers of the checkpoint, sizes from its config.json."""
    _set_defaults(args, bert_path=None, bert_layers=0, causal_target=False, dropout=None,
                  attention_dropout=None, bert_config=None)


@register_model_architecture("bert_teacher", "bert_teacher_small")
def bert_teacher_small(args):
    """The first 6 layers (Chen et al. 2020's 6-layer ablation)."""
    _set_defaults(args, bert_layers=6)
    bert_teacher_base(args)


@register_model_architecture("bert_teacher", "bert_teacher_l2r")
def bert_teacher_l2r(args):
    """Left-to-right ablation: causal self-attention over the target."""
    args.causal_target = True
    bert_teacher_base(args)
