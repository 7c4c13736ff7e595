"""teacher.py: the one teacher loader (frozen, device/dtype, dictionaries checked, overrides,
the KD options of a KD-trained teacher switched off), and cli/_common.py's one device and
precision policy, through every command that loads a teacher."""
import argparse
import os
import shutil

import pytest
import torch

import utils
from fairseq_kd import checkpoint
from fairseq_kd.cli._common import add_device_arguments, device_and_dtype
from fairseq_kd.teacher import TeacherEnsemble, load_teacher


def _weights(path):
    return checkpoint.load(path)["model"]


def test_a_loaded_teacher_is_frozen_in_eval_with_the_checkpoints_weights(tiny_data, tiny_teacher, tiny_teacher2):
    from fairseq.tasks.translation import TranslationTask

    teacher = load_teacher(f"{tiny_teacher}:{tiny_teacher2}", data=tiny_data)
    assert isinstance(teacher, TeacherEnsemble) and len(teacher) == 2
    assert teacher.paths == [tiny_teacher, tiny_teacher2]
    assert isinstance(teacher.task, TranslationTask) and teacher.task.cfg.data == tiny_data
    assert (teacher.device, teacher.dtype) == (torch.device("cpu"), torch.float32)
    for model, path in zip(teacher.models, teacher.paths):
        assert not model.training and all(not m.training for m in model.modules())
        assert not any(p.requires_grad for p in model.parameters())
        saved = _weights(path)
        for name, tensor in model.state_dict().items():
            if name in saved:
                assert torch.equal(tensor, saved[name].float()), name
    # the two checkpoints are different models, not one loaded twice
    name = "decoder.embed_tokens.weight"
    assert not torch.equal(teacher.models[0].state_dict()[name], teacher.models[1].state_dict()[name])
    assert load_teacher([tiny_teacher], data=tiny_data).paths == [tiny_teacher]  # a list works too


def test_loading_a_teacher_leaves_the_random_number_generators_as_they_were(tiny_data, tiny_teacher, tiny_teacher2):
    """Building each model draws its initial weights; load_teacher gives the draws back, so a
    student built after its teacher starts from the weights of the same seed without one."""
    import random

    import numpy as np
    from fairseq import utils as fairseq_utils

    for kwargs in ({"data": tiny_data}, {"task": load_teacher(tiny_teacher, data=tiny_data).task}):
        fairseq_utils.set_torch_seed(3)
        np.random.seed(3)
        random.seed(3)
        load_teacher(f"{tiny_teacher}:{tiny_teacher2}", **kwargs)
        after = (torch.rand(4), np.random.rand(4), random.random())
        fairseq_utils.set_torch_seed(3)
        np.random.seed(3)
        random.seed(3)
        want = (torch.rand(4), np.random.rand(4), random.random())
        assert torch.equal(after[0], want[0]) and np.array_equal(after[1], want[1]) and after[2] == want[2]


def test_dtype_and_generation(tiny_data, tiny_teacher):
    teacher = load_teacher(tiny_teacher, data=tiny_data, device=torch.device("cpu"), dtype=torch.float16,
                           generation=True)
    assert teacher.dtype == torch.float16
    saved = _weights(tiny_teacher)
    model = teacher.models[0]
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    weight = model.state_dict()["encoder.embed_tokens.weight"]
    assert torch.equal(weight, saved["encoder.embed_tokens.weight"].half())
    with pytest.raises(RuntimeError, match="make_generation_fast"):  # fairseq's prepare_for_inference_ ran
        model.train()


def test_with_the_students_task_the_task_is_shared(tiny_data, tiny_teacher):
    task = load_teacher(tiny_teacher, data=tiny_data).task
    teacher = load_teacher(tiny_teacher, task=task)
    assert teacher.task is task


def test_overrides_are_applied(tiny_data, tiny_teacher):
    assert load_teacher(tiny_teacher, data=tiny_data).task.cfg.left_pad_source is True  # fairseq's default
    teacher = load_teacher(tiny_teacher, data=tiny_data, overrides={"left_pad_source": False})
    assert teacher.task.cfg.left_pad_source is False


def test_a_kd_trained_teachers_own_kd_options_are_switched_off(tiny_data, tiny_teacher, tmp_path):
    """A teacher trained with --task translation_kd --teacher-path X (X since deleted)
    loads without X: its task is built with teacher_path, soft_labels, distilled_data off."""
    from fairseq_kd.tasks.translation_kd import TranslationKDTask

    state = checkpoint.load(tiny_teacher)
    state["cfg"]["task"].update(_name="translation_kd", teacher_path=str(tmp_path / "gone.pt"),
                                soft_labels=str(tmp_path / "gone"))
    path = str(tmp_path / "kd_teacher.pt")
    torch.save(state, path)
    teacher = load_teacher(path, data=tiny_data)
    assert isinstance(teacher.task, TranslationKDTask)
    assert teacher.task.cfg.teacher_path is None and teacher.task.cfg.soft_labels is None
    assert teacher.task.teacher is None


@pytest.fixture
def swapped_data(tiny_data, tmp_path):
    """tiny_data with two symbols of the target dictionary swapped (same size, other order)."""
    data = str(tmp_path / "swapped")
    shutil.copytree(tiny_data, data)
    path = os.path.join(data, "dict.tgt.txt")
    lines = open(path).read().splitlines(keepends=True)
    lines[0], lines[1] = lines[1], lines[0]
    open(path, "w").write("".join(lines))
    return data


def test_a_dictionary_mismatch_is_refused(tiny_teacher, swapped_data):
    from fairseq.tasks.translation import TranslationConfig, TranslationTask

    with pytest.raises(ValueError, match="target dictionaries differ: .* first difference at index 4"):
        load_teacher(tiny_teacher, data=swapped_data)
    student = TranslationTask.setup_task(TranslationConfig(data=swapped_data))
    with pytest.raises(ValueError, match=f"{tiny_teacher}: target dictionaries differ"):
        load_teacher(tiny_teacher, task=student)


def test_missing_inputs_name_the_file(tiny_data, tiny_teacher, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"teacher checkpoint not found: {tmp_path / 'no.pt'}"):
        load_teacher(f"{tiny_teacher}:{tmp_path / 'no.pt'}", data=tiny_data)
    with pytest.raises(FileNotFoundError, match=f"checkpoint not found: {tmp_path / 'no.pt'}"):
        load_teacher(str(tmp_path / "no.pt"), data=tiny_data, what="checkpoint")
    with pytest.raises(FileNotFoundError, match=f"data directory not found: {tmp_path / 'nodata'}"):
        load_teacher(tiny_teacher, data=str(tmp_path / "nodata"))
    with pytest.raises(ValueError, match="--path is empty"):
        load_teacher("", data=tiny_data)


# ------------------------------------------------------------ the device/precision policy
def _args(*argv):
    parser = argparse.ArgumentParser()
    add_device_arguments(parser)
    return parser.parse_args(argv)


def test_float32_on_the_cpu():
    assert device_and_dtype(_args("--cpu")) == (torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("flag", ["--fp16", "--bf16"])
def test_half_precision_needs_a_gpu(flag, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU there, and --cpu given
    with pytest.raises(ValueError, match=f"^{flag} needs a GPU \\(--cpu given\\): remove {flag}"):
        device_and_dtype(_args("--cpu", flag))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=f"^{flag} needs a GPU \\(none found\\)"):
        device_and_dtype(_args(flag))


def test_fp16_and_bf16_exclude_each_other():
    with pytest.raises(SystemExit):
        _args("--fp16", "--bf16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_half_precision_on_a_gpu():
    device, dtype = device_and_dtype(_args("--fp16"))
    assert device.type == "cuda" and dtype == torch.float16
    if torch.cuda.is_bf16_supported():
        assert device_and_dtype(_args("--bf16"))[1] == torch.bfloat16
    else:
        with pytest.raises(ValueError, match="does not support bfloat16"):
            device_and_dtype(_args("--bf16"))


def _command_argv(command, data, teacher, out):
    return {
        "dump-soft-labels": [data, "--path", teacher, "--out", out],
        "distill-corpus": [data, "--path", teacher, "--subset", "valid", "--out", out],
        "evaluate": [data, "--path", teacher, "--latency-sentences", "0", "--results-path", out],
        "dump-logits": ["--path", teacher, "--data", data, "--split", "valid", "--out", out],
    }[command]


@pytest.mark.parametrize("command,flag", [("dump-soft-labels", "--fp16"), ("distill-corpus", "--fp16"),
                                          ("evaluate", "--fp16"), ("dump-logits", "--fp16"),
                                          ("dump-soft-labels", "--bf16")])
def test_every_teacher_command_refuses_half_precision_on_the_cpu(command, flag, tiny_data, tiny_teacher, tmp_path):
    out = tmp_path / "out"
    prog = f"fairseq-kd-{command}"
    proc = utils.run([utils.command(prog), *_command_argv(command, tiny_data, tiny_teacher, out), "--cpu", flag],
                     check=False)
    lines = [line for line in proc.stderr.splitlines() if line.startswith(prog) or "Traceback" in line]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines == [f"{prog}: error: {flag} needs a GPU (--cpu given): remove {flag} to run in float32 on the CPU"]
    assert not os.path.exists(out)
