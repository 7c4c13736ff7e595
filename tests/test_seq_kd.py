"""--criterion seq_kd: (1 - alpha) * LS-NLL(gold) + alpha * LS-NLL(distilled)."""
import math

import pytest
import torch
import torch.nn.functional as F

import utils


@pytest.fixture(scope="module")
def distilled(tiny_data, tiny_teacher, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("seq_kd") / "distilled")
    utils.distill_corpus(tiny_data, tiny_teacher, out, ["--beam", "2"])
    return out


def _in_process(data, distilled_dir, alpha):
    return utils.build_in_process([
        data, *utils.TINY_TRANSFORMER, "--task", "translation_kd", "--distilled-data", distilled_dir,
        "--criterion", "seq_kd", "--label-smoothing", "0.1", "--kd-alpha", str(alpha), "--cpu",
    ])


def _label_smoothed(lprobs, target, pad, eps=0.1):
    """fairseq's label-smoothed NLL summed over non-pad tokens, by hand: (loss, nll)."""
    mask = target.ne(pad)
    lp = lprobs[mask]  # N x V
    nll = -lp.gather(-1, target[mask].unsqueeze(-1)).sum()
    eps_i = eps / (lp.size(-1) - 1)
    return (1 - eps - eps_i) * nll + eps_i * (-lp.sum()), nll


def test_alpha_zero_equals_label_smoothed_cross_entropy(tiny_data, distilled):
    from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

    cfg, task, model, criterion = _in_process(tiny_data, distilled, 0)
    sample = utils.first_batch(task)
    assert "distilled" in sample
    baseline = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)
    model.train()  # dropout on: both runs draw the same masks for the gold pass
    torch.manual_seed(0)
    loss_kd, size_kd, log_kd = criterion(model, sample)
    torch.manual_seed(0)
    loss_ls, size_ls, log_ls = baseline(model, sample)
    assert loss_kd.item() == loss_ls.item()  # exactly
    assert size_kd == size_ls == sample["ntokens"]
    assert log_kd["nll_loss"].item() == log_ls["nll_loss"].item()
    assert log_kd["distilled_nll_loss"].item() > 0  # logged even when its weight is 0
    loss_kd.backward()  # the gold term carries the gradient


def test_loss_matches_direct_computation(tiny_data, distilled):
    alpha = 0.3
    cfg, task, model, criterion = _in_process(tiny_data, distilled, alpha)
    sample = utils.first_batch(task)
    model.eval()
    loss, sample_size, logs = criterion(model, sample)
    pad = task.target_dictionary.pad()
    D = sample["distilled"]
    with torch.no_grad():
        lp_gold = F.log_softmax(model(**sample["net_input"])[0].float(), -1)
        net_input_D = dict(sample["net_input"], prev_output_tokens=D["prev_output_tokens"])
        lp_dist = F.log_softmax(model(**net_input_D)[0].float(), -1)
    ls_gold, nll_gold = _label_smoothed(lp_gold, sample["target"], pad)
    ls_dist, nll_dist = _label_smoothed(lp_dist, D["target"], pad)
    assert loss.item() == pytest.approx(((1 - alpha) * ls_gold + alpha * ls_dist).item(), rel=1e-5)
    assert logs["nll_loss"].item() == pytest.approx(nll_gold.item(), rel=1e-5)
    assert logs["distilled_loss"].item() == pytest.approx(ls_dist.item(), rel=1e-5)
    assert logs["distilled_nll_loss"].item() == pytest.approx(nll_dist.item(), rel=1e-5)
    assert logs["distilled_ntokens"] == int(D["target"].ne(pad).sum())
    assert sample_size == sample["ntokens"]
    # Row b of the distilled targets is the distilled corpus's sentence sample["id"][b].
    corpus = task.dataset("train").distilled
    for b, sid in enumerate(sample["id"].tolist()):
        row = D["target"][b]
        assert torch.equal(row[row.ne(pad)], corpus[sid].long())


def test_alpha_one_is_training_on_the_distilled_targets(tiny_data, distilled):
    """alpha = 1: the LS loss of a batch whose target is the distilled one."""
    from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

    cfg, task, model, criterion = _in_process(tiny_data, distilled, 1)
    sample = utils.first_batch(task)
    model.eval()
    loss, _, logs = criterion(model, sample)
    D = sample["distilled"]
    swapped = dict(sample, target=D["target"], ntokens=D["ntokens"],
                   net_input=dict(sample["net_input"], prev_output_tokens=D["prev_output_tokens"]))
    loss_ls, _, _ = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)(model, swapped)
    assert loss.item() == pytest.approx(loss_ls.item(), rel=1e-6)
    assert loss.requires_grad


def test_alpha_out_of_range_and_missing_distilled_data(tiny_data, distilled):
    with pytest.raises(ValueError, match="--kd-alpha must be in"):
        _in_process(tiny_data, distilled, 1.5)
    with pytest.raises(ValueError, match="--distilled-data DIR"):
        utils.build_in_process([tiny_data, *utils.TINY_TRANSFORMER, "--task", "translation_kd",
                                "--criterion", "seq_kd", "--kd-alpha", "0.5", "--cpu"])


def test_end_to_end_train_with_seq_kd(tiny_data, distilled, tmp_path):
    proc = utils.train(
        tiny_data, str(tmp_path / "student"), max_update=20,
        criterion=["--task", "translation_kd", "--criterion", "seq_kd", "--label-smoothing", "0.1",
                   "--kd-alpha", "0.5"],
        extra=["--distilled-data", distilled],
    )
    records = [r for r in utils.json_logs(proc.stdout + proc.stderr) if "distilled_nll_loss" in r]
    assert records, "distilled_nll_loss is not logged"
    for key in ("loss", "nll_loss", "distilled_loss", "distilled_nll_loss"):
        assert math.isfinite(float(records[-1][key])), key
    assert (tmp_path / "student" / "checkpoint_last.pt").exists()
