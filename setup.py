"""fairseq_kd: knowledge distillation for text generation as a fairseq plugin.

Install torch first (``pip install torch==2.13.0`` on the CPU machines this
project is developed on), then ``pip install --no-build-isolation -e .``: fairseq
compiles C++ extensions against the torch you run, and build isolation would
fetch another torch for the build.
"""
from setuptools import find_packages, setup

# One entry per fairseq-kd-* command: name -> module under fairseq_kd.cli.
COMMANDS = {
    "fairseq-kd-dump-soft-labels": "dump_soft_labels",
    "fairseq-kd-bert-tokenize": "bert_tokenize",
    "fairseq-kd-distill-corpus": "distill_corpus",
    "fairseq-kd-data-stats": "data_stats",
    "fairseq-kd-evaluate": "evaluate",
    "fairseq-kd-merge-shards": "merge_shards",
    "fairseq-kd-dump-logits": "dump_logits",
    "fairseq-kd-augment": "augment",
    "fairseq-kd-build-prior": "build_prior",
}

setup(
    name="fairseq_kd",
    version="0.1.0",
    description="Knowledge distillation for text generation, as a fairseq plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=["fairseq_kd", "fairseq_kd.*"]),
    install_requires=[
        # The official 0.12.2 release does not import on Python 3.11 (dataclass
        # mutable defaults); fairseq-fixed is fairseq main with that fixed.
        "fairseq==0.12.2; python_version < '3.11'",
        "fairseq-fixed==0.12.3.1; python_version >= '3.11'",
        # A range that an already installed torch 2.13.0 satisfies, so pip never
        # replaces it with a CUDA build pulled in from the registry.
        "torch>=2.1,<2.14",
        "numpy",
        "sacrebleu>=2.0",
        "sacremoses",  # Moses (de)tokenization: recipes, detokenized BLEU
        "sentencepiece",
        "subword-nmt",
        "tokenizers",
        "safetensors",
        "tqdm",
    ],
    extras_require={
        # On Python 3.11: pip install cython && pip install --no-build-isolation fastBPE
        "fastbpe": ["fastBPE"],
        "rouge": ["rouge-score"],
        "study": ["matplotlib"],  # the Multi30k study's figure
        "test": ["pytest"],
    },
    entry_points={
        "console_scripts": [
            f"{name}=fairseq_kd.cli.{module}:cli_main" for name, module in COMMANDS.items()
        ],
    },
)
