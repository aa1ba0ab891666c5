"""The ablation study of MF-RSVLM's design choices on the synthetic benchmark: ``python -m studies.ablate_synthetic``
(run from the repository root; ``--help`` lists the flags). `variants` says what each run changes, `runner` prepares the
shared data / tokenizer / tower and runs ``rsfuse train`` + ``rsfuse eval`` per (variant, seed), `report` writes the
markdown report (default ``docs/ablations/ABLATIONS.md``)."""

from .report import (  # noqa: F401
    DETAIL_KIND,
    OTHER_TYPES,
    SMALL_OBJECT_TYPES,
    cell,
    collect,
    compare,
    kind_accuracies,
    load_run,
    machine,
    mean_std,
    train_seconds,
    verdict,
    write_report,
)
from .runner import (  # noqa: F401
    MERGED_MAX_LENGTH,
    JobQueue,
    eval_command,
    job_order,
    main,
    parse_args,
    prepare_data,
    prepare_tokenizer,
    prepare_tower,
    prepare_train_json,
    run_one,
    train_command,
    undecided_jobs,
)
from .variants import COMPARISONS, GOAL_PAIR, STUDY_OVERRIDES, VARIANTS, Variant, study_overrides  # noqa: F401
