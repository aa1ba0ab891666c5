"""Goals, figures and the Markdown table of a run."""

import argparse

from paper_scale.common import SYSTEMS




# ----- summary -----------------------------------------------------------------------------------------------------
def lookup(node, *path):
    """``node[path[0]][path[1]]...``, or None where a key is missing (a section that did not run)."""
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def goal_rows(results: dict, args: argparse.Namespace) -> list[dict]:
    """The issue's goals, each with the run's value (None where its section did not run)."""
    sections, rows = results["sections"], []

    def get(*path):
        return lookup(sections, *path)

    n = args.new_tokens
    answer, llava = (get("answers1", "answers", s, "answer_s") for s in ("rsfuse-compile", "llava-hf"))
    rows.append({"goal": f"{n}-token answer, batch 1, rsfuse compile / transformers LLaVA", "target": "<= 0.8",
                 "value": None if answer is None or llava is None else round(answer / llava, 3)})
    rows.append({"goal": f"{n}-token answer, batch 1, rsfuse compile (s)", "target": "aim <= 0.6", "value": answer})
    rows.append({"goal": f"decode step (t{n} - t1)/{n - 1}, rsfuse compile / weight-streaming floor", "target": "<= 2",
                 "value": get("decode_floor", "decode", "rsfuse-compile", "ratio_to_floor")})
    ours, theirs = (get("batch", "answers", s, "answers_per_s") for s in ("rsfuse-compile", "llava-hf"))
    rows.append({"goal": f"answers/s at batch {args.batch}, rsfuse compile / transformers LLaVA", "target": "report",
                 "value": None if ours is None or theirs is None else round(ours / theirs, 3)})
    batch = max(args.detail_batches)
    fractions = [value for value in (get("detail", f"batch{batch}", "fraction_of_matmul"),
                                     get("tower", f"batch{args.tower_batch or batch}", "fraction_of_matmul"))
                 if value is not None]
    rows.append({"goal": f"detail stage, batch {batch}, fraction of measured matmul throughput (best of eager / "
                         "compiled tower)", "target": ">= 0.6", "value": max(fractions) if fractions else None})
    rows.append({"goal": f"continuous batching at {args.batch} clients: one at a time / one session (the serve bound)",
                 "target": ">= 3 (GPU, paper size)", "value": get("serve", f"clients{args.batch}", "ratio")})
    return rows


def collect_figures(results: dict) -> dict:
    """The headline figures in one flat mapping (None where a section did not run)."""
    sections = results["sections"]

    def get(*path):
        return lookup(sections, *path)

    def per_system(section: str, key: str, systems=SYSTEMS) -> dict:
        return {system: get(section, "answers", system, key) for system in systems}

    references = get("references", "references") or {}
    figures = {
        "matmul_tflops": references.get("matmul_tflops"),
        "read_gb_per_s": references.get("read_gb_per_s"),
        "llava_logits_relative_difference": get("checks", "llava_logits", "relative_difference"),
        "llava_logits_top1_agreement": get("checks", "llava_logits", "top1_agreement_text_positions"),
        "answer_b1_s": per_system("answers1", "answer_s"),
        "first_token_b1_s": per_system("answers1", "answer_1_s"),
        "decode_step_b1_ms": per_system("answers1", "decode_step_ms"),
        "session_step_b1_ms": per_system("answers1", "session_step_ms", SYSTEMS[1:]),
        "decode_floor_ms": get("decode_floor", "decode", "floor_ms"),
        "decode_step_over_floor": {s: get("decode_floor", "decode", s, "ratio_to_floor") for s in SYSTEMS},
        "answer_b1_over_llava": None,
        "compile_vs_eager_token_agreement": {
            name: get(name, "answers", "compile_vs_eager_tokens", "token_agreement") for name in ("answers1", "batch")
        },
        "answers_per_s_batch": per_system("batch", "answers_per_s"),
        "detail": {},
    }
    llava = figures["answer_b1_s"]["llava-hf"]
    if llava:
        figures["answer_b1_over_llava"] = {
            s: round(v / llava, 3) for s, v in figures["answer_b1_s"].items() if v is not None and s != "llava-hf"
        }
    for section, label in (("detail", "eager"), ("tower", "compiled")):
        for key, entry in (sections.get(section) or {}).items():
            if not key.startswith("batch"):
                continue
            figures["detail"][f"{label}_{key}"] = {
                name: entry.get(name)
                for name in ("rsfuse_ms_per_image", "fraction_of_matmul", "rsfuse_peak_gib", "authors_ms_per_image",
                             "authors_peak_gib", "speedup_vs_authors", "agreement")
                if name in entry
            }
    return figures


def table(results: dict) -> str:
    sections = results["sections"]
    setup = sections.get("setup", {}).get("setup", {})
    lines = [f"# gpu_paper_scale: {setup.get('device_name')} | torch {setup.get('torch')} | transformers "
             f"{setup.get('transformers')} | {setup.get('config')} | {setup.get('dtype')}", ""]
    references = sections.get("references", {}).get("references")
    if references:
        lines.append(f"references: matmul {references['matmul_size']}^3 {references['matmul_tflops']} TFLOP/s; "
                     f"read-only bandwidth {references['read_gb_per_s']} GB/s {references['read_gb_per_s_by_kernel']}")
    lines += ["", "| measurement | llava-hf | rsfuse eager | rsfuse compile |", "| --- | --- | --- | --- |"]
    for name in ("answers1", "batch"):
        answers = sections.get(name, {}).get("answers")
        if not answers:
            continue
        batch = answers["batch"]

        def cell(system, key, scale=1.0, unit=""):
            value = answers.get(system, {}).get(key)
            return "-" if value is None else f"{value * scale:.4g}{unit}"

        lines.append(f"| batch {batch}: {answers['new_tokens']}-token answer | " + " | ".join(
            cell(s, "answer_s", unit=" s") for s in SYSTEMS) + " |")
        lines.append(f"| batch {batch}: 1-token answer | " + " | ".join(cell(s, "answer_1_s", unit=" s") for s in SYSTEMS) + " |")
        lines.append(f"| batch {batch}: decode step (tN - t1)/(N - 1) | " + " | ".join(
            cell(s, "decode_step_ms", unit=" ms") for s in SYSTEMS) + " |")
        if batch == 1:
            lines.append("| batch 1: steady session step | - | " + " | ".join(
                cell(s, "session_step_ms", unit=" ms") for s in SYSTEMS[1:]) + " |")
        lines.append(f"| batch {batch}: answers/s | " + " | ".join(cell(s, "answers_per_s") for s in SYSTEMS) + " |")
        agreement = answers.get("compile_vs_eager_tokens")
        if agreement:
            lines.append(f"| batch {batch}: compiled vs eager greedy tokens | | | {agreement['token_agreement']:.3f} agree, "
                         f"{agreement['identical_rows']}/{agreement['rows']} rows identical |")
    floor = sections.get("decode_floor", {}).get("decode")
    if floor:
        lines.append(f"\ndecode floor: {floor['decoder_gib_per_token']} GiB / {floor['read_gb_per_s']} GB/s = "
                     f"{floor['floor_ms']} ms; " + "; ".join(
                         f"{s} {floor[s]['ratio_to_floor']}x" for s in SYSTEMS if s in floor))
    for name, label in (("detail", "eager tower"), ("tower", "compiled tower blocks")):
        detail = sections.get(name)
        if not detail:
            continue
        lines += ["", f"| detail stage ({label}) | rsfuse ms/image | TFLOP/s | fraction of matmul | authors' way "
                  "ms/image | speed-up | peak GiB rsfuse / authors | agreement (global / stacks) |", "| --- " * 8 + "|"]
        for key, entry in detail.items():
            if not key.startswith("batch"):
                continue
            agreement = entry.get("agreement", {})
            lines.append(
                f"| {key} | {entry['rsfuse_ms_per_image']} | {entry['tflops']:.4g} | {entry['fraction_of_matmul']} | "
                f"{entry.get('authors_ms_per_image', '-')} | {entry.get('speedup_vs_authors', '-')} | "
                f"{entry.get('rsfuse_peak_gib')} / {entry.get('authors_peak_gib', '-')} | "
                f"{agreement.get('global_relative_difference', '-')} / {agreement.get('stacks_relative_difference', '-')} |"
            )
    reference = (sections.get("detail") or {}).get("authors_real_code_reference")
    if reference:
        lines.append(f"\nthe authors' real code (issue 14): {reference['ms_per_image']} ms/image, peak {reference['peak_gib']} GiB, "
                     f"{reference['machine']}")
    checks = sections.get("checks", {})
    for key, check in checks.items():
        lines.append(f"\ncheck {key}: relative difference {check['relative_difference']}, top-1 agreement "
                     f"{check['top1_agreement_text_positions']} ({check['dtype']})")
    lines += ["", "| goal | target | value |", "| --- | --- | --- |"]
    lines += [f"| {row['goal']} | {row['target']} | {row['value']} |" for row in results.get("goals", [])]
    if results.get("skipped"):
        lines.append(f"\nskipped: {results['skipped']}")
    return "\n".join(lines)


