"""Evaluate MF-RSVLM: ``python recipes/mf_rsvlm_eval.py [--config FILE] [key=value ...]`` (also ``rsfuse eval``).

Tasks: ``vrsbench_vqa`` (protocol official | lenient), ``vrsbench_cap`` and ``caption`` (coco | compat), ``cls``,
``rsvqa_lr``, ``grounding``, ``synthetic``. Answers are generated greedily with the KV cache in left-padded
batches of similar prompt lengths and appended to ``<output_dir>/predictions.jsonl`` as they are made, so an
interrupted run resumes where it stopped (a predictions file written for another task, model or data file is
refused). Under ``torchrun`` the records are sharded across the processes and one ``predictions.jsonl`` is merged
(resume works across process counts). The scores go to
``metrics.json`` and ``metrics.md`` (every number under the protocol that produced it) and the table is printed.

Examples::

    python recipes/mf_rsvlm_eval.py task=synthetic model=runs/mf_rsvlm_tiny/final data=data/synthetic/test.json \\
        output_dir=runs/eval_synthetic
    torchrun --nproc_per_node 8 recipes/mf_rsvlm_eval.py task=vrsbench_vqa model=DIR data=VRSBench_EVAL_vqa.json \
        output_dir=runs/eval_vqa
    python recipes/mf_rsvlm_eval.py --config recipes/configs/eval_vrsbench_vqa.yaml model=ckpt/mfrsvlm-7b_sft
    python recipes/mf_rsvlm_eval.py task=cls model=DIR data=AID/ output_dir=runs/eval_aid limit=500

Keys, their types and defaults: ``python recipes/mf_rsvlm_eval.py --help``; the logic is
``rsfuse/recipes/evaluate.py`` (its docstring lists what it supports).
"""

import sys

from rsfuse.recipes.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
