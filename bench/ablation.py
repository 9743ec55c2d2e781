"""The paper's component ablation (SLADE Table 2 structure) on a CPU-sized protocol.

Per seed: one teacher, one set of pseudo labels, then one student per variant from the
same teacher and pseudo labels, each evaluated on the chosen split. Prints one row per
seed and variant, then the mean and standard deviation over the seeds, as MAP@R / RP / P@1
in percent.

    python bench/ablation.py --preset omniglot-ssl --seeds 0 1 2
    python bench/ablation.py --preset omniglot-ssl --split val --seeds 0 1 2 \\
        --variant mining:mu+/mu- --variant mining:all/mu+
    python bench/ablation.py --preset fashion-mnist-ssl --split val

``--split val`` evaluates on a validation split carved from the labeled classes, with half
of each validation class's images moved into the unlabeled pool (as the test classes are in
the protocols' pools): ``data.val_classes`` (20 of Omniglot's 86 labeled characters; 2 of
Fashion-MNIST's 5 labeled classes, whose 3 remaining classes then come in m-per-class
batches of 2 classes, ``teacher.m=32 student.labeled_m=16``) and ``data.val_in_pool=0.5``.
This is where the presets' settings were chosen; the test split only reports.

Variants: ``pseudo_only``, ``basis``, ``preset`` (the preset's own student settings) and
``mining:T1/T2`` (``basis_mining`` with the given threshold rules or numbers, e.g.
``mining:mu+/mu-``, DESIGN.md's default, or ``mining:all/mu+``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import slade

METRICS = ("map_at_r", "r_precision", "precision_at_1")
DEFAULT_VARIANTS = ("pseudo_only", "basis", "preset")
VAL_OVERRIDES = {
    "omniglot-ssl": ["data.val_classes=20"],
    "fashion-mnist-ssl": ["data.val_classes=2", "teacher.m=32", "student.labeled_m=16"],
}


def variant_overrides(variant: str) -> list[str]:
    if variant == "preset":
        return []
    if variant in ("pseudo_only", "basis"):
        return [f"student.variant={variant}"]
    if variant.startswith("mining:"):
        t1, t2 = variant.split(":", 1)[1].split("/")
        return ["student.variant=basis_mining", f"student.t1={t1}", f"student.t2={t2}"]
    raise SystemExit(f"unknown variant {variant!r}")


def percent(metrics: dict) -> list[float]:
    return [100.0 * metrics[name] for name in METRICS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="omniglot-ssl")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variant", action="append", help="repeatable; default: " + ", ".join(DEFAULT_VARIANTS))
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for every run")
    parser.add_argument("--teacher-only", action="store_true", help="no students (teacher settings)")
    args = parser.parse_args()
    variants = [] if args.teacher_only else args.variant or list(DEFAULT_VARIANTS)

    rows: dict[str, list[list[float]]] = {"teacher": []}
    for variant in variants:
        rows[variant] = []
    for seed in args.seeds:
        base = [f"seed={seed}", "eval.plots=false"]
        if args.split == "val":
            base += VAL_OVERRIDES.get(args.preset, ["data.val_classes=0.2"])
            base += ["data.val_in_pool=0.5", "data.evaluate_on=val"]
        base += args.overrides
        config = slade.config.preset(args.preset, base)
        data = slade.load_data(config)
        began = time.perf_counter()
        teacher = slade.train_teacher(data, config)
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
            student = slade.train_student(data, pseudo, student_config, teacher=teacher)
            rows[variant].append(percent(slade.evaluate(student, data, config=student_config)))
            print(f"seed {seed} {variant} {rows[variant][-1][0]:.1f} MAP@R "
                  f"({time.perf_counter() - began:.0f} s)", flush=True)

    print(f"\n{args.preset}, {args.split} split, seeds {args.seeds}: mean ± std (percent)")
    print(f"| {'model':<22} | MAP@R | RP | P@1 |")
    print("| --- | ---: | ---: | ---: |")
    for name, values in rows.items():
        cells = []
        for column in zip(*values):
            spread = statistics.stdev(column) if len(column) > 1 else 0.0
            cells.append(f"{statistics.mean(column):.1f} ± {spread:.1f}")
        print(f"| {name:<22} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
