"""--criterion d2gpo: against a dense computation written like the paper's code, and end to end."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fairseq.data import Dictionary

import utils
from fairseq_kd.criterions.d2gpo import D2GPoCriterion
from fairseq_kd.data import array_store, prior


def _embeddings(V, seed=0):
    return torch.randn(V, 8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def priors(tiny_data, tmp_path_factory):
    """Priors of tiny_data's target dictionary from random embeddings: k = V and k = 4 (float32),
    k = V (float16). Returns (dir by name, embeddings)."""
    root = tmp_path_factory.mktemp("priors")
    d = Dictionary.load(os.path.join(tiny_data, "dict.tgt.txt"))
    emb = _embeddings(len(d))
    cand = ~prior.special_symbols(d)
    header = {"dictionary_checksum": array_store.dictionary_checksum(d)}
    dirs = {}
    for name, k, dtype in (("full", len(d), "float32"), ("k4", 4, "float32"), ("full16", len(d), "float16")):
        dirs[name] = str(root / name)
        prior.build(dirs[name], emb, cand, k, 1.0, header, dtype=dtype)
    return dirs, emb


def dense_prior(emb, dictionary, k, sigma=1.0):
    """The paper's dense V x V weights (generate_d2gpo_distribution.py, gaussian, offset 0),
    with our candidate rule: specials only themselves, ranks beyond k at -inf (no mass)."""
    V = len(dictionary)
    special = prior.special_symbols(dictionary)
    unit = emb / emb.norm(dim=-1, keepdim=True)
    sims = (unit @ unit.T).numpy()
    pdf = lambda r: math.exp(-r * r / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))  # noqa: E731
    W = torch.full((V, V), float("-inf"))
    for v in range(V):
        W[v, v] = pdf(0)
        if special[v]:
            continue
        others = [u for u in np.argsort(-sims[v], kind="stable") if u != v and not special[u]]
        for r, u in enumerate(others[: k - 1], 1):
            W[v, u] = pdf(r)
    return W


def paper_loss(logits, target, W, pad, alpha, T, T_S, eps=0.1):
    """compute_loss of d2gpo_label_smoothed_cross_entropy.py (--d2gpo-post-softmax, KL), dense,
    with fairseq's current label smoothing (eps / (V - 1)) and a student temperature T_S."""
    logits, target = logits.view(-1, logits.size(-1)), target.view(-1)
    mask = target.ne(pad)
    lprobs = F.log_softmax(logits, dim=-1)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)[mask].sum()
    eps_i = eps / (lprobs.size(-1) - 1)
    ls = (1 - eps - eps_i) * nll + eps_i * (-lprobs.sum(-1)[mask].sum())
    q = F.softmax(W[target] / T, dim=-1)  # N x V, dense
    kd = torch.nn.KLDivLoss(reduction="none")(F.log_softmax(logits / T_S, dim=-1), q).sum(-1)
    kd = kd.masked_fill(~mask, 0.0).sum()
    return ls * (1 - alpha) + kd * alpha * T * T, kd


def _in_process(data, prior_dir, *extra, task="translation"):
    return utils.build_in_process([
        data, *utils.TINY_TRANSFORMER, "--task", task, "--criterion", "d2gpo", "--label-smoothing", "0.1",
        "--d2gpo-prior", prior_dir, "--cpu", *extra,
    ])


def _eval_loss(criterion, model, sample):
    model.eval()
    with torch.no_grad():
        loss, size, logs = criterion(model, sample)
        logits = model(**sample["net_input"])[0]
    return loss, size, logs, logits


@pytest.mark.parametrize("student_T", [None, 2.0, 0.5])
def test_full_vocabulary_prior_equals_the_papers_dense_loss(tiny_data, priors, student_T):
    """k = V: the sparse store gives the paper's dense loss (by default the student at
    T_S = 1 as its code; or at another temperature)."""
    dirs, emb = priors
    alpha, T = 0.3, 2.0
    extra = ["--kd-alpha", str(alpha), "--d2gpo-temperature", str(T)]
    if student_T is not None:
        extra += ["--d2gpo-student-temperature", str(student_T)]
    cfg, task, model, criterion = _in_process(tiny_data, dirs["full"], *extra)
    sample = utils.first_batch(task)
    loss, size, logs, logits = _eval_loss(criterion, model, sample)
    d = task.target_dictionary
    W = dense_prior(emb, d, len(d))
    expected, kd = paper_loss(logits, sample["target"], W, d.pad(), alpha, T, student_T or 1.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["d2gpo_kl"].item() == pytest.approx(kd.item(), rel=1e-5)
    assert size == sample["ntokens"]


def test_topk_prior_equals_the_truncated_dense_loss(tiny_data, priors):
    """k = 4 stored, or the first 4 of a k = V store (--d2gpo-topk 4): the dense loss whose prior
    rows keep only the 4 best ranks."""
    dirs, emb = priors
    cfg, task, model, criterion = _in_process(tiny_data, dirs["k4"])
    sample = utils.first_batch(task)
    loss, _, logs, logits = _eval_loss(criterion, model, sample)
    d = task.target_dictionary
    expected, kd = paper_loss(logits, sample["target"], dense_prior(emb, d, 4), d.pad(), 0.1, 2.0, 1.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)

    criterion_topk = D2GPoCriterion(task, False, 0.1, d2gpo_prior=dirs["full"], d2gpo_topk=4)
    loss_topk = _eval_loss(criterion_topk, model, sample)[0]
    assert loss_topk.item() == pytest.approx(loss.item(), rel=1e-6)


def test_float16_weights_change_the_loss_by_little(tiny_data, priors):
    dirs, _ = priors
    cfg, task, model, criterion = _in_process(tiny_data, dirs["full"])
    sample = utils.first_batch(task)
    loss32 = _eval_loss(criterion, model, sample)[0]
    criterion16 = D2GPoCriterion(task, False, 0.1, d2gpo_prior=dirs["full16"])
    assert criterion16.prior.weights.dtype == torch.float16
    loss16 = _eval_loss(criterion16, model, sample)[0]
    assert loss16.item() == pytest.approx(loss32.item(), rel=1e-4)


def test_alpha_zero_equals_label_smoothed_cross_entropy(tiny_data, priors):
    from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

    dirs, _ = priors
    cfg, task, model, criterion = _in_process(tiny_data, dirs["k4"], "--kd-alpha", "0")
    sample = utils.first_batch(task)
    baseline = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)
    model.train()
    torch.manual_seed(0)
    loss, size, logs = criterion(model, sample)
    torch.manual_seed(0)
    loss_ls, size_ls, logs_ls = baseline(model, sample)
    assert loss.item() == loss_ls.item()  # exactly
    assert size == size_ls and logs["nll_loss"].item() == logs_ls["nll_loss"].item()
    assert logs["d2gpo_kl"].item() > 0  # logged even when unweighted


def test_prior_is_not_part_of_the_criterion_state(tiny_data, priors):
    dirs, _ = priors
    cfg, task, model, criterion = _in_process(tiny_data, dirs["k4"])
    assert list(criterion.parameters()) == [] and criterion.state_dict() == {}
    assert criterion.prior.ids.shape == (len(task.target_dictionary), 4)
    assert criterion.prior.nbytes() == len(task.target_dictionary) * 4 * (4 + 4)


def test_works_with_translation_kd(tiny_data, priors):
    dirs, _ = priors
    _, task_a, model_a, crit_a = _in_process(tiny_data, dirs["k4"])
    _, task_b, model_b, crit_b = _in_process(tiny_data, dirs["k4"], task="translation_kd")
    model_b.load_state_dict(model_a.state_dict())
    sample = utils.first_batch(task_a)
    assert _eval_loss(crit_b, model_b, sample)[0].item() == _eval_loss(crit_a, model_a, sample)[0].item()


def test_prior_of_another_dictionary_is_refused(tiny_data, tmp_path):
    d = Dictionary.load(os.path.join(tiny_data, "dict.tgt.txt"))
    other = Dictionary()
    for symbol in reversed(d.symbols[d.nspecial:]):
        other.add_symbol(symbol)
    path = str(tmp_path / "other")
    prior.build(path, _embeddings(len(other)), ~prior.special_symbols(other), 3, 1.0,
                {"dictionary_checksum": array_store.dictionary_checksum(other)})
    with pytest.raises(array_store.StoreError, match="does not match the target dictionary: dictionary_checksum"):
        _in_process(tiny_data, path)
    with pytest.raises(ValueError, match="needs --d2gpo-prior"):
        utils.build_in_process([tiny_data, *utils.TINY_TRANSFORMER, "--criterion", "d2gpo", "--cpu"])


def test_student_trains_with_d2gpo(tiny_data, priors, tmp_path):
    """fairseq-train --task translation --criterion d2gpo: a few updates, the NLL falls,
    the prior term is logged and the checkpoint holds the student only."""
    dirs, _ = priors
    save = tmp_path / "student"
    proc = utils.train(
        tiny_data, str(save), max_update=30,
        criterion=["--task", "translation", "--criterion", "d2gpo", "--label-smoothing", "0.1",
                   "--d2gpo-prior", dirs["k4"]],
    )
    records = [r for r in utils.json_logs(proc.stdout + proc.stderr) if "d2gpo_kl" in r]
    assert len(records) >= 2, "d2gpo_kl is not logged"
    assert all(math.isfinite(float(r["d2gpo_kl"])) and float(r["d2gpo_kl"]) > 0 for r in records)
    assert float(records[-1]["nll_loss"]) < float(records[0]["nll_loss"])

    from fairseq_kd import checkpoint

    state = checkpoint.load(str(save / "checkpoint_last.pt"))
    assert state["criterion"] is None
    assert not any("prior" in key for key in state["model"])
    assert state["cfg"]["criterion"]["_name"] == "d2gpo"

    # A trained fairseq checkpoint is an embedding source of fairseq-kd-build-prior.
    from fairseq_kd.cli import build_prior

    args = build_prior.build_parser().parse_args([
        "--dict", os.path.join(tiny_data, "dict.tgt.txt"), "--checkpoint", str(save / "checkpoint_last.pt"),
        "--out", str(tmp_path / "prior"), "--topk", "3",
    ])
    header = build_prior.run(args)
    emb = state["model"]["decoder.embed_tokens.weight"].float()
    assert header["embedding"]["dim"] == emb.size(1) and header["embedding"]["source"] == "fairseq_checkpoint"
    _, arrays = array_store.open_store(str(tmp_path / "prior"), prior.KIND)
    word = 4  # the first non-special word: itself, then its most similar non-special word
    sims = F.cosine_similarity(emb[word].unsqueeze(0), emb, dim=-1)
    sims[: 4] = -2
    sims[word] = -2
    assert arrays["ids"][word, 0] == word and arrays["ids"][word, 1] == int(sims.argmax())
