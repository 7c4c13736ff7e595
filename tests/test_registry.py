"""Every name the plugin registers is new to fairseq, and --user-dir finds them all."""
import json
import os
import re
import sys

import utils

PROBE = r"""
import json, sys
from fairseq.tasks import TASK_REGISTRY
from fairseq.models import MODEL_REGISTRY, ARCH_MODEL_REGISTRY, ARCH_CONFIG_REGISTRY
from fairseq.criterions import CRITERION_REGISTRY
regs = {"task": TASK_REGISTRY, "model": MODEL_REGISTRY, "arch": ARCH_MODEL_REGISTRY, "criterion": CRITERION_REGISTRY}
before = {k: set(v) for k, v in regs.items()}
from fairseq import utils
utils.import_user_module(type("A", (), {"user_dir": sys.argv[1]})())
added = {k: sorted(set(v) - before[k]) for k, v in regs.items()}
owner = {k: {n: (regs[k][n].__module__ if k != "arch" else ARCH_CONFIG_REGISTRY[n].__module__) for n in regs[k]} for k in regs}
print(json.dumps({"added": added, "owner": owner}))
"""


def _registered_in_source(with_file=False):
    """(kind, name) of every register_* call in the plugin's source; with ``with_file``,
    (kind, name, the registering file's name without .py)."""
    found = set()
    for root, _, files in os.walk(utils.USER_DIR):
        for f in files:
            if not f.endswith(".py"):
                continue
            src = open(os.path.join(root, f)).read()
            where = (f[:-3],) if with_file else ()
            for kind, name in re.findall(r"register_(task|model|criterion)\(\s*\"([^\"]+)\"", src):
                found.add((kind, name, *where))
            for name in re.findall(r"register_model_architecture\(\s*\"[^\"]+\"\s*,\s*\"([^\"]+)\"", src):
                found.add(("arch", name, *where))
    return found


def _probe(user_dir):
    proc = utils.run([sys.executable, "-c", PROBE, user_dir])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_no_registered_name_shadows_fairseq():
    result = _probe(utils.USER_DIR)
    names = _registered_in_source()
    assert ("task", "translation_kd") in names and ("criterion", "word_kd") in names
    for kind, name in names:
        # fairseq silently keeps its own class for a duplicate task/model name:
        # a name that was not *added* by the plugin shadows one of fairseq's.
        assert name in result["added"][kind], f"{kind} {name!r} is already registered by fairseq"
        assert result["owner"][kind][name].startswith("fairseq_kd"), (kind, name)


def test_file_name_is_the_registry_key():
    """A task, model or criterion is registered by the file of its name; an architecture
    (a preset) by the file whose name starts it (cmlm_kd.py registers cmlm_kd_*)."""
    registered = _registered_in_source(with_file=True)
    assert ("arch", "cmlm_kd_wmt_en_de", "cmlm_kd") in registered
    assert ("arch", "levt_kd_iwslt_de_en", "levt_kd") in registered
    for kind, name, stem in registered:
        if kind == "arch":
            assert name == stem or name.startswith(stem + "_"), f"--arch {name} is registered in {stem}.py"
        else:
            assert name == stem, f"{kind} {name!r} is registered in {stem}.py"


def test_user_dir_of_the_installed_package_registers_the_same_names():
    import fairseq_kd

    installed = os.path.dirname(fairseq_kd.__file__)
    assert _probe(installed)["added"] == _probe(utils.USER_DIR)["added"]


def test_every_console_command_has_help():
    """setup.py's fairseq-kd-* commands exist and answer --help."""
    sys.path.insert(0, utils.REPO)
    src = open(os.path.join(utils.REPO, "setup.py")).read()
    commands = re.findall(r"\"(fairseq-kd-[a-z-]+)\"\s*:", src)
    assert commands
    for name in commands:
        proc = utils.run([utils.command(name), "--help"])
        assert "usage:" in proc.stdout, name
