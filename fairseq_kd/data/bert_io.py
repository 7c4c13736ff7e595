"""Reading (and, for tests, writing) Hugging Face BERT checkpoints without ``transformers``.

A checkpoint is a directory with ``config.json``, ``vocab.txt`` (one WordPiece
a line; the line number is the id) and ``model.safetensors`` or
``pytorch_model.bin``. Weights may be a bare ``BertModel`` (``embeddings.*``,
``encoder.*``, and usually the pooler ``pooler.dense.*``) or a ``BertForMaskedLM``
/ ``BertForPreTraining`` (the same under ``bert.`` plus the masked-LM head
``cls.predictions.*``). Every error names the file at fault.

The vocabulary helpers here are the plugin's only ones: BERT's special pieces
(:data:`SPECIALS` and the fairseq symbols that stand for them), finding a
``vocab.txt`` (:func:`vocab_file`) and telling an uncased vocabulary from a
cased one (:func:`is_uncased`).
"""
import json
import os
from typing import Dict, List, Optional, Tuple

import torch

from ..errors import MissingFileError, UsageError

CONFIG, VOCAB = "config.json", "vocab.txt"
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# The BertConfig fields the teacher uses, with BERT's defaults for optional ones.
CONFIG_FIELDS = {
    "hidden_size": None,
    "num_hidden_layers": None,
    "num_attention_heads": None,
    "intermediate_size": None,
    "vocab_size": None,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
}
# BERT's special pieces, in the order of bert-base's vocab.txt (ids 0, 100, 101, 102, 103).
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = SPECIALS
# fairseq's special symbols and the BERT pieces they stand for (the embedding row of <s> is
# BERT's [CLS], ...), <mask> being the one fairseq's sentence_prediction adds to its dictionary
# (models/bert_teacher.py puts [MASK] one past a translation dictionary instead).
FAIRSEQ_TO_BERT_SPECIALS = {"<s>": CLS, "<pad>": PAD, "</s>": SEP, "<unk>": UNK, "<mask>": MASK}


class BertCheckpointError(ValueError):
    """A BERT checkpoint directory is missing a file or holds a malformed one."""


def _file(path: str, name: str) -> str:
    if not os.path.isdir(path):
        raise BertCheckpointError(f"--bert-path {path} is not a directory")
    file = os.path.join(path, name)
    if not os.path.isfile(file):
        raise BertCheckpointError(f"{file} not found (a BERT checkpoint needs {CONFIG}, {VOCAB} and weights)")
    return file


def read_config(path: str) -> Dict:
    """The BertConfig fields of ``path/config.json`` the teacher needs."""
    file = _file(path, CONFIG)
    try:
        with open(file) as f:
            raw = json.load(f)
    except ValueError as e:
        raise BertCheckpointError(f"{file} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise BertCheckpointError(f"{file} must hold a JSON object")
    config = {}
    for key, default in CONFIG_FIELDS.items():
        value = raw.get(key, default)
        if value is None:
            raise BertCheckpointError(f"{file} has no {key!r}")
        config[key] = value
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if not isinstance(config[key], int) or config[key] <= 0:
            raise BertCheckpointError(f"{file}: {key} must be a positive integer, got {config[key]!r}")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise BertCheckpointError(f"{file}: hidden_size is not a multiple of num_attention_heads")
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise BertCheckpointError(f"{file}: only absolute position embeddings are supported")
    return config


def read_vocab(path: str) -> List[str]:
    """WordPiece vocabulary of ``path/vocab.txt``, in id order."""
    file = _file(path, VOCAB)
    with open(file, encoding="utf-8") as f:
        pieces = [line.rstrip("\n").rstrip("\r") for line in f]
    while pieces and pieces[-1] == "":
        pieces.pop()
    missing = [s for s in SPECIALS if s not in pieces]
    if not pieces or missing:
        raise BertCheckpointError(f"{file} is not a BERT vocabulary (missing {', '.join(missing) or 'pieces'})")
    return pieces


def vocab_file(path: str) -> str:
    """The vocab.txt that ``path`` (the file, or the BERT directory holding it) names;
    FileNotFoundError / ValueError when it is missing or holds no [UNK] piece
    (a tokenizer's vocabulary need not hold the other specials)."""
    file = os.path.join(path, VOCAB) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise MissingFileError(f"BERT vocabulary not found: {file}")
    with open(file, encoding="utf-8") as f:
        if not any(line.strip() == UNK for line in f):  # the tokenizer maps unknown words to it
            what = "is empty" if os.path.getsize(file) == 0 else f"has no {UNK} piece"
            raise UsageError(f"BERT vocabulary {file} {what}: --vocab takes a BERT checkpoint's vocab.txt "
                             "(or its directory)")
    return file


def is_uncased(path: str) -> bool:
    """Whether the BERT vocabulary ``path`` (its vocab.txt, or the directory holding
    it) is uncased, i.e. its tokenizer lowercases and strips accents.

    ``do_lower_case`` of a ``tokenizer_config.json`` beside vocab.txt decides when it
    is there. Else the vocabulary is uncased when no piece (``[...]`` specials left
    out) holds a character that lowercasing changes: an uncased vocabulary is
    built from lowercased text, yet holds symbols that Unicode calls upper case
    but that have no lower case, such as U+211D (bert-base-uncased's and MiniLM's
    vocabularies hold it), while a cased one holds "The".
    """
    file = os.path.join(path, VOCAB) if os.path.isdir(path) else path
    config = os.path.join(os.path.dirname(file), "tokenizer_config.json")
    if os.path.isfile(config):
        with open(config, encoding="utf-8") as f:
            try:
                lower = json.load(f).get("do_lower_case")
            except (ValueError, AttributeError):  # not JSON, or not an object: guess from the pieces
                lower = None
        if isinstance(lower, bool):
            return lower
    with open(file, encoding="utf-8") as f:
        for line in f:
            piece = line.strip()
            if piece.startswith("[") and piece.endswith("]"):
                continue
            if any(c.lower() != c for c in piece):
                return False
    return True


def weights_file(path: str) -> str:
    if not os.path.isdir(path):
        raise BertCheckpointError(f"--bert-path {path} is not a directory")
    for name in WEIGHTS:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise BertCheckpointError(f"{path} has no weights: expected {' or '.join(WEIGHTS)}")


def read_state_dict(path: str) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, torch.Tensor]], str]:
    """``(encoder, head, file)``: the encoder's tensors under BertModel names
    (``embeddings.*``, ``encoder.*`` and, when the checkpoint has BERT's pooler,
    ``pooler.dense.*``), the masked-LM head's under ``transform.*`` / ``bias``
    (None when the checkpoint has none)."""
    file = weights_file(path)
    fix = "download the BERT checkpoint again"
    if file.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(file)
        except SafetensorError as e:  # an empty, cut or foreign file
            raise BertCheckpointError(f"{file} could not be read ({e}): {fix}") from e
    else:
        from ..checkpoint import CheckpointError, load

        try:
            state = load(file, what="BERT weights", fix=fix)  # the safe unpickler
        except CheckpointError as e:
            raise BertCheckpointError(str(e)) from e
    if not isinstance(state, dict):
        raise BertCheckpointError(f"{file} does not hold a state dict")
    encoder, head = {}, {}
    for key, value in state.items():
        # Old TF-converted checkpoints call LayerNorm parameters gamma/beta.
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if key.startswith("bert."):
            key = key[len("bert."):]
        if key.startswith(("embeddings.", "encoder.", "pooler.dense.")):
            encoder[key] = value
        elif key.startswith("cls.predictions.transform."):
            head[key[len("cls.predictions."):]] = value
        elif key == "cls.predictions.bias":
            head["bias"] = value
    if "embeddings.word_embeddings.weight" not in encoder:
        raise BertCheckpointError(f"{file} has no embeddings.word_embeddings.weight: not a BERT checkpoint")
    return encoder, (head or None), file


def read_word_embeddings(path: str) -> Tuple[torch.Tensor, str]:
    """``(table, file)``: the W x d input embeddings ``embeddings.word_embeddings.weight``
    of the BERT checkpoint directory ``path`` (row i = piece i of vocab.txt) and the
    weights file read. A ``model.safetensors`` is read for that one tensor only."""
    file = weights_file(path)
    if not file.endswith(".safetensors"):
        return read_state_dict(path)[0]["embeddings.word_embeddings.weight"], file
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(file, "pt") as f:
            keys = [k for k in f.keys() if k in ("embeddings.word_embeddings.weight",
                                                  "bert.embeddings.word_embeddings.weight")]
            if not keys:
                raise BertCheckpointError(f"{file} has no embeddings.word_embeddings.weight: not a BERT checkpoint")
            return f.get_tensor(keys[0]), file
    except SafetensorError as e:  # an empty, cut or foreign file
        raise BertCheckpointError(f"{file} could not be read ({e}): download the BERT checkpoint again") from e


def write_checkpoint(
    path: str,
    words: List[str],
    hidden_size: int = 16,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    intermediate_size: int = 32,
    max_position_embeddings: int = 64,
    with_head: bool = True,
    with_pooler: bool = True,
    safetensors: bool = True,
    seed: int = 0,
) -> str:
    """Write a random BERT checkpoint in the Hugging Face format (tests, demos).

    The vocabulary is BERT's specials followed by ``words``. With ``with_head``
    the weights are a ``BertForMaskedLM`` (``bert.`` prefix, ``cls.predictions``),
    else a bare ``BertModel``; ``with_pooler`` adds BERT's pooler (``pooler.dense``).
    """
    g = torch.Generator().manual_seed(seed)
    vocab = list(SPECIALS) + [w for w in words if w not in SPECIALS]
    H, I = hidden_size, intermediate_size

    def randn(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    state = {
        "embeddings.word_embeddings.weight": randn(len(vocab), H),
        "embeddings.position_embeddings.weight": randn(max_position_embeddings, H),
        "embeddings.token_type_embeddings.weight": randn(2, H),
        "embeddings.LayerNorm.weight": 1 + randn(H) * 0.1,
        "embeddings.LayerNorm.bias": randn(H) * 0.1,
    }
    for i in range(num_hidden_layers):
        p = f"encoder.layer.{i}."
        for name, (rows, cols) in {
            "attention.self.query": (H, H), "attention.self.key": (H, H), "attention.self.value": (H, H),
            "attention.output.dense": (H, H), "intermediate.dense": (I, H), "output.dense": (H, I),
        }.items():
            state[p + name + ".weight"] = randn(rows, cols)
            state[p + name + ".bias"] = randn(rows) * 0.1
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            state[p + name + ".weight"] = 1 + randn(H) * 0.1
            state[p + name + ".bias"] = randn(H) * 0.1
    if with_head:
        state = {"bert." + k: v for k, v in state.items()}
        state.update({
            "cls.predictions.transform.dense.weight": randn(H, H),
            "cls.predictions.transform.dense.bias": randn(H) * 0.1,
            "cls.predictions.transform.LayerNorm.weight": 1 + randn(H) * 0.1,
            "cls.predictions.transform.LayerNorm.bias": randn(H) * 0.1,
            "cls.predictions.bias": randn(len(vocab)) * 0.1,
        })
    if with_pooler:  # drawn last, so that the other tensors do not depend on it
        prefix = "bert." if with_head else ""
        state[prefix + "pooler.dense.weight"] = randn(H, H)
        state[prefix + "pooler.dense.bias"] = randn(H) * 0.1
    os.makedirs(path, exist_ok=True)
    config = {
        "architectures": ["BertForMaskedLM" if with_head else "BertModel"], "model_type": "bert",
        "hidden_size": H, "num_hidden_layers": num_hidden_layers, "num_attention_heads": num_attention_heads,
        "intermediate_size": I, "vocab_size": len(vocab), "max_position_embeddings": max_position_embeddings,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "pad_token_id": 0,
    }
    with open(os.path.join(path, CONFIG), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(path, VOCAB), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    state = {k: v.contiguous() for k, v in state.items()}
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, os.path.join(path, WEIGHTS[0]))
    else:
        torch.save(state, os.path.join(path, WEIGHTS[1]))
    return path
