"""Train MF-RSVLM: ``python recipes/mf_rsvlm_train.py [--config FILE] [key=value ...]``.

Without arguments this runs the embedded default (``recipes/configs/default_tiny.yaml``): it writes the synthetic
remote-sensing benchmark to ``data/synthetic/`` if missing, trains a sentencepiece tokenizer on its training text,
trains the tiny MF-RSVLM from scratch on the CPU (all parts trainable), then answers the synthetic test questions by
greedy generation and prints a per-question-type accuracy table (also in ``<output_dir>/eval_synthetic.json``).

Examples::

    python recipes/mf_rsvlm_train.py                                    # the embedded default
    python recipes/mf_rsvlm_train.py --config recipes/configs/stage2_sft_7b.yaml data.json=... model.init_from=...
    python recipes/mf_rsvlm_train.py output_dir=runs/x max_steps=50 save_every=10 train.lr=1e-3
    python recipes/mf_rsvlm_train.py resume=auto                        # continue from the newest checkpoint
    torchrun --nproc_per_node 8 recipes/mf_rsvlm_train.py --config recipes/configs/stage2_sft_7b.yaml ...

Keys, their types and defaults: ``python recipes/mf_rsvlm_train.py --help``; the recipe itself is
``rsfuse/recipes/train.py`` (its docstring lists what it supports).
"""

import sys

from rsfuse.recipes.train import main

if __name__ == "__main__":
    sys.exit(main())
