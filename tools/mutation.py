"""Mutation testing of rsfuse's core modules with cosmic-ray (on demand, never in CI).

cosmic-ray rewrites the source files in place while it runs, so run this in a private copy of the repository::

    pip install -e '.[dev,mutation]'
    git worktree add /tmp/rsfuse-mut HEAD && cd /tmp/rsfuse-mut
    python tools/mutation.py run gated router          # one or more modules by short name; "all" for every one
    python tools/mutation.py report                    # per-module table (markdown) from the sessions so far
    python tools/mutation.py survivors gated           # the diff of every surviving mutant
    python tools/mutation.py run gated --rerun-survivors   # after adding tests: run the survivors again
    python tools/mutation.py run stitch --top-up 10        # a sampled session: 10 more of its sampled-out mutants

Each module runs against only the test files that exercise it (``MODULES`` below), with ``-x``, without pytest's
cache and with ``RSFUSE_TYPECHECK=0`` (shape checking off: faster, and it is what users run). Removing the
``@typecheck`` decorator is therefore a no-op and is skipped before execution (see ``skip_typecheck_decorators``).
Sessions are SQLite files under ``--sessions`` (default ``.mutation/``); ``run`` resumes a session that exists, so a
run cut short by ``--budget`` (seconds per module) continues where it stopped. ``--sample N`` keeps N mutants chosen
by a fixed seed and skips the rest, for modules too slow to run whole.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# short name -> (module path, test files that exercise it, extra pytest args)
MODULES: dict[str, tuple[str, list[str], list[str]]] = {
    "canvas": ("rsfuse/encoders/canvas.py", ["tests/test_canvas.py"], []),
    "stitch": ("rsfuse/encoders/stitch.py", ["tests/test_canvas.py"], []),
    "windows": ("rsfuse/encoders/windows.py", ["tests/test_canvas.py"], []),
    "sampler": ("rsfuse/fusion/sampler.py", ["tests/test_fusion.py"], []),
    "projector": ("rsfuse/fusion/projector.py", ["tests/test_fusion.py"], []),
    "router": ("rsfuse/injection/router.py", ["tests/test_injection.py", "tests/test_graft.py"], []),
    "gated": ("rsfuse/injection/gated.py", ["tests/test_injection.py", "tests/test_graft.py"], []),
    "graft": ("rsfuse/injection/graft.py", ["tests/test_graft.py", "tests/test_injection.py"], []),
    "visual": ("rsfuse/injection/visual.py", ["tests/test_injection.py", "tests/test_graft.py"], []),
    "layers": ("rsfuse/llm/layers.py", ["tests/test_llama.py"], []),
    "cache": ("rsfuse/llm/cache.py", ["tests/test_llama.py"], []),
    "generation": (
        "rsfuse/generation/session.py",
        ["tests/test_generation_session.py", "tests/test_generate.py"],
        [],
    ),
    "sampling": ("rsfuse/generation/sampling.py", ["tests/test_generation_session.py", "tests/test_generate.py"], []),
    "decoding": ("rsfuse/generation/generate.py", ["tests/test_generate.py", "tests/test_generation_session.py"], []),
    "layout": ("rsfuse/model/layout.py", ["tests/test_layout.py", "tests/test_mfrsvlm.py"], []),
    "matching": ("rsfuse/eval/matching.py", ["tests/test_eval_matching.py", "tests/test_eval_vqa.py"], []),
}

PYTEST = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]


# tests written to kill survivors (docs/MUTATION.md), run for every module
KILLERS = ["tests/test_mutants.py"]


def test_command(name: str) -> str:
    _, tests, extra = MODULES[name]
    return " ".join(shlex.quote(part) for part in [*PYTEST, *tests, *KILLERS, *extra])


def config_text(name: str, timeout: float) -> str:
    command = test_command(name)
    if '"' in command or "\\" in command:
        raise SystemExit("the test command must not contain double quotes or backslashes")
    return (
        "[cosmic-ray]\n"
        f'module-path = "{MODULES[name][0]}"\n'
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f'test-command = "{command}"\n'
        "\n[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )


def _fail(message: str):
    raise SystemExit(message)


def baseline_seconds(name: str, env: dict[str, str]) -> float:
    """Run the targeted tests once on the unmutated code; they must pass."""
    start = time.monotonic()
    done = subprocess.run(shlex.split(test_command(name)), cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        _fail(f"{name}: the targeted tests fail on the unmutated code:\n{done.stdout[-3000:]}")
    return time.monotonic() - start


def skip_typecheck_decorators(session: Path, sample: int | None, seed: int = 19) -> None:
    """Mark as skipped the removals of ``@typecheck`` (identity with RSFUSE_TYPECHECK=0) and, with ``sample``, all but
    ``sample`` mutants chosen by ``seed``."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    skipped = WorkResult(worker_outcome=WorkerOutcome.SKIPPED)
    with use_db(session, WorkDB.Mode.open) as db:
        done = {job for job, _ in ((r[0], r[1]) for r in db.results)}
        items = [item for item in db.work_items if item.job_id not in done]
        keep = []
        for item in items:
            (mutation,) = item.mutations
            if mutation.operator_name == "core/RemoveDecorator":
                line = (ROOT / mutation.module_path).read_text().splitlines()[mutation.start_pos[0] - 1]
                if line.strip().startswith("@typecheck"):
                    db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="typecheck"))
                    continue
            keep.append(item)
        if sample is not None and len(keep) > sample:
            chosen = {item.job_id for item in random.Random(seed).sample(keep, sample)}
            for item in keep:
                if item.job_id not in chosen:
                    db.set_result(item.job_id, skipped)


def forget_survivors(session: Path) -> int:
    """Drop the results of the surviving mutants so that ``exec`` runs them again (after new tests)."""
    import sqlite3

    with sqlite3.connect(session) as db:
        return db.execute("DELETE FROM work_results WHERE upper(test_outcome) = 'SURVIVED'").rowcount


def top_up(session: Path, count: int, seed: int = 19) -> int:
    """Bring ``count`` more sampled-out mutants of a sampled session back to pending (a fixed-seed draw from the
    sorted sampled-out ids), so that ``exec`` runs them: a larger sample without discarding the results so far."""
    import sqlite3

    with sqlite3.connect(session) as db:
        out = sorted(row[0] for row in db.execute(
            "SELECT job_id FROM work_results WHERE worker_outcome = 'SKIPPED' AND output IS NULL"))
        chosen = random.Random(seed).sample(out, min(count, len(out)))
        db.executemany("DELETE FROM work_results WHERE job_id = ?", [(job,) for job in chosen])
    return len(chosen)


def run(name: str, sessions: Path, budget: float | None, sample: int | None, rerun: bool = False,
        more: int = 0) -> None:
    module = MODULES[name][0]
    dirty = subprocess.run(["git", "status", "--porcelain", "--", module], cwd=ROOT, capture_output=True, text=True)
    if dirty.stdout.strip():
        # the run ends with `git checkout -- module` (a mutant left behind by a kill): it would discard these edits
        _fail(f"{name}: {module} has uncommitted changes; run in a private copy (git worktree add /tmp/rsfuse-mut HEAD)")
    env = {**os.environ, "RSFUSE_TYPECHECK": "0"}
    os.environ["RSFUSE_TYPECHECK"] = "0"
    sessions.mkdir(parents=True, exist_ok=True)
    base = baseline_seconds(name, env)
    timeout = round(max(30.0, 4 * base), 1)
    config = sessions / f"{name}.toml"
    config.write_text(config_text(name, timeout))
    session = sessions / f"{name}.sqlite"
    if not session.exists():
        subprocess.run(["cosmic-ray", "init", str(config), str(session)], cwd=ROOT, env=env, check=True)
        skip_typecheck_decorators(session, sample)
    else:
        if rerun:
            print(f"{name}: running {forget_survivors(session)} surviving mutants again", flush=True)
        if more:
            print(f"{name}: {top_up(session, more)} more sampled mutants", flush=True)
    print(f"{name}: baseline {base:.1f}s, per-mutant timeout {timeout}s", flush=True)
    proc = subprocess.Popen(["cosmic-ray", "exec", str(config), str(session)], cwd=ROOT, env=env)
    try:
        proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait()
        print(f"{name}: budget of {budget}s spent, session left resumable", flush=True)
    finally:
        # cosmic-ray restores the file after each mutant; make sure a kill mid-mutant leaves the source intact
        subprocess.run(["git", "checkout", "--", MODULES[name][0]], cwd=ROOT, check=True)


def counts(session: Path) -> dict[str, int]:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    out = {"total": 0, "killed": 0, "survived": 0, "timeout": 0, "skipped_typecheck": 0, "skipped": 0, "pending": 0}
    with use_db(session, WorkDB.Mode.open) as db:
        out["total"] = db.num_work_items
        results = dict(db.results)
        for job, result in results.items():
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                out["skipped_typecheck" if result.output == "typecheck" else "skipped"] += 1
            elif result.test_outcome == TestOutcome.SURVIVED:
                out["survived"] += 1
            elif result.worker_outcome == WorkerOutcome.ABNORMAL or (
                result.output and "timeout" in result.output.lower()
            ):
                out["timeout"] += 1
            else:
                out["killed"] += 1
        out["pending"] = out["total"] - len(results)
    return out


def report(sessions: Path) -> None:
    print("| module | mutants | run | killed | timeout | survived | skipped (typecheck) | sampled out | pending | score |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, (module, _, _) in MODULES.items():
        session = sessions / f"{name}.sqlite"
        if not session.exists():
            print(f"| `{module}` | not run | | | | | | | | |")
            continue
        c = counts(session)
        ran = c["killed"] + c["timeout"] + c["survived"]
        score = f"{100 * (c['killed'] + c['timeout']) / ran:.1f}%" if ran else "-"
        print(
            f"| `{module}` | {c['total']} | {ran} | {c['killed']} | {c['timeout']} | {c['survived']} | "
            f"{c['skipped_typecheck']} | {c['skipped']} | {c['pending']} | {score} |"
        )


def survivors(name: str, sessions: Path) -> None:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome

    with use_db(sessions / f"{name}.sqlite", WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.test_outcome == TestOutcome.SURVIVED:
                (m,) = item.mutations
                print(f"### {item.job_id} {m.operator_name} line {m.start_pos[0]}")
                print(result.diff)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=Path, default=ROOT / ".mutation")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run")
    p_run.add_argument("modules", nargs="+", choices=[*MODULES, "all"])
    p_run.add_argument("--budget", type=float, default=None, help="wall seconds per module")
    p_run.add_argument("--sample", type=int, default=None, help="run only this many mutants (fixed seed)")
    p_run.add_argument("--rerun-survivors", action="store_true", help="run the survivors of a session again")
    p_run.add_argument("--top-up", type=int, default=0, metavar="K",
                       help="a sampled session: run K more of its sampled-out mutants (fixed seed)")
    sub.add_parser("report")
    p_surv = sub.add_parser("survivors")
    p_surv.add_argument("module", choices=list(MODULES))
    args = parser.parse_args(argv)
    if args.command == "run":
        names = list(MODULES) if "all" in args.modules else args.modules
        for name in names:
            run(name, args.sessions, args.budget, args.sample, args.rerun_survivors, args.top_up)
    elif args.command == "report":
        report(args.sessions)
    else:
        survivors(args.module, args.sessions)


if __name__ == "__main__":
    main()
