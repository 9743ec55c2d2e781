"""The paper's ablations (SLADE Tables 2-5 structure) on a CPU-sized protocol, as paired
differences against the student trained on pseudo labels only.

Per seed: one teacher, one set of pseudo labels, then one student per variant from the same
teacher and pseudo labels, each evaluated on the chosen split, and its diagnostics
(`slade.diagnose`: precision of pseudo and mined pairs, kept fractions, ROC-AUC of the basis
similarity among pseudo positives) where the pool's hidden labels are known. Prints one line
per seed and variant, then per variant the mean ± standard error over seeds of MAP@R / RP /
P@1 (percent) and of its paired MAP@R difference to ``pseudo_only``, with the kept fraction
and the precision of mined positives.

    python bench/ablation.py --preset omniglot-ssl --seeds 0 1 2 3 4
    python bench/ablation.py --preset omniglot-ssl --split val --seeds 0 1 2 \\
        --variant mining:mu+/mu- --variant "warm=student.basis_warmup=100"
    python bench/ablation.py --preset fashion-mnist-ssl --variant oracle --variant random

``--split val`` evaluates on a validation split held out from the labeled classes, with half
of each validation class's images moved into the unlabeled pool (as the test classes are in
the protocols' pools). On omniglot-ssl it holds out one whole labeled alphabet
(``data.val_groups=1``), so that validation, like test, asks for alphabets never seen with
labels; on fashion-mnist-ssl 2 of the 5 labeled classes. The presets' settings were chosen
there; the test split only reports.

Variants: ``pseudo_only``, ``basis``, ``preset`` (the preset's own student), ``oracle`` and
``random`` (the preset's mining replaced by the research bounds: pseudo pairs the hidden
labels confirm; as many pseudo pairs as basis mining keeps, drawn at random),
``mining:T1/T2`` (``basis_mining`` with these threshold rules or numbers) and
``NAME=key=value,key=value`` (any overrides of the preset's student, named NAME).
``pseudo_only`` is always run: it is the baseline of the paired differences.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import slade

METRICS = ("map_at_r", "r_precision", "precision_at_1")
DEFAULT_VARIANTS = ("basis", "preset")
VAL_OVERRIDES = {
    "omniglot-ssl": ["data.val_groups=1"],
    "fashion-mnist-ssl": ["data.val_classes=2", "teacher.m=32", "student.labeled_m=16"],
}
SHOWN = ("mined_positive_kept", "mined_positive_precision", "pseudo_positive_precision",
         "auc_basis_pseudo_positive", "pseudo_negative_precision", "mined_negative_kept",
         "mined_negative_precision")


def variant_overrides(variant: str) -> list[str]:
    if variant == "preset":
        return []
    if variant in ("pseudo_only", "basis"):
        return [f"student.variant={variant}"]
    if variant in ("oracle", "random"):
        return ["student.variant=basis_mining", f"student.mining={variant}"]
    if variant.startswith("mining:"):
        t1, t2 = variant.split(":", 1)[1].split("/")
        return ["student.variant=basis_mining", f"student.t1={t1}", f"student.t2={t2}"]
    if "=" in variant:
        return [item for item in variant.split("=", 1)[1].split(",") if item]
    raise SystemExit(f"unknown variant {variant!r}")


def name_of(variant: str) -> str:
    return variant.split("=", 1)[0] if "=" in variant and ":" not in variant else variant


def percent(metrics: dict) -> list[float]:
    return [100.0 * metrics[name] for name in METRICS]


def mean_se(values: list[float]) -> str:
    if not values:
        return "-"
    spread = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="omniglot-ssl")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--variant", action="append", help="repeatable; default: " + ", ".join(DEFAULT_VARIANTS))
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for every run")
    parser.add_argument("--teacher-only", action="store_true", help="no students (teacher settings)")
    args = parser.parse_args()
    variants = [] if args.teacher_only else ["pseudo_only"] + [
        v for v in (args.variant or list(DEFAULT_VARIANTS)) if v != "pseudo_only"
    ]

    rows: dict[str, list[list[float]]] = {"teacher": []}
    diag: dict[str, list[dict]] = {}
    for variant in variants:
        rows[name_of(variant)] = []
        diag[name_of(variant)] = []
    for seed in args.seeds:
        base = [f"seed={seed}", "eval.plots=false", "progress=false"]
        if args.split == "val":
            base += VAL_OVERRIDES.get(args.preset, ["data.val_classes=0.2"])
            base += ["data.val_in_pool=0.5", "data.evaluate_on=val"]
        base += args.overrides
        config = slade.config.preset(args.preset, base)
        data = slade.load_data(config)
        began = time.perf_counter()
        # ablation 1: with ssl.enabled, teacher and students start from the SwAV weights
        init = slade.train_ssl(data, config) if config.ssl.enabled else None
        teacher = slade.train_teacher(data, config, init=init)
        rows["teacher"].append(percent(slade.evaluate(teacher, data, config=config)))
        print(f"seed {seed} teacher {rows['teacher'][-1][0]:.1f} MAP@R "
              f"({time.perf_counter() - began:.0f} s)", flush=True)
        if not variants:
            continue
        pseudo = slade.pseudo_label(teacher, data, config=config)
        print(f"seed {seed} pseudo labels {pseudo.summary()}", flush=True)
        for variant in variants:
            began = time.perf_counter()
            student_config = slade.config.preset(args.preset, base + variant_overrides(variant))
            student = slade.train_student(data, pseudo, student_config, init=init, teacher=teacher)
            name = name_of(variant)
            rows[name].append(percent(slade.evaluate(student, data, config=student_config)))
            found = slade.diagnose(student, data, pseudo, student_config).get("pairs", {})
            diag[name].append(found)
            shown = " ".join(f"{k}={found[k]:.3f}" for k in SHOWN if k in found)
            print(f"seed {seed} {name} {rows[name][-1][0]:.1f} MAP@R "
                  f"({time.perf_counter() - began:.0f} s) {shown}", flush=True)

    print(f"\n{args.preset}, {args.split} split, seeds {args.seeds}: mean ± standard error "
          "(percent); diff = paired MAP@R difference to pseudo_only")
    print("| model | MAP@R | RP | P@1 | diff | kept P | prec. P |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    baseline = [r[0] for r in rows.get("pseudo_only", [])]
    for name, values in rows.items():
        cells = [mean_se(list(column)) for column in zip(*values)]
        diff = mean_se([r[0] - b for r, b in zip(values, baseline)]) if name != "teacher" and baseline else "-"
        found = diag.get(name, [])
        kept = [100 * d["mined_positive_kept"] for d in found if "mined_positive_kept" in d]
        prec = [100 * d.get("mined_positive_precision", d["pseudo_positive_precision"]) for d in found]
        print(f"| {name} | " + " | ".join(cells) + f" | {diff} | {mean_se(kept)} | {mean_se(prec)} |")


if __name__ == "__main__":
    main()
