# Target `heldout` (outside `all` unless heldout.in_all): the margins Proposed - Gauss and
# Proposed - control on N images drawn (heldout.seed) from heldout.dir (BSDS500's test split, used
# by neither training nor tuning), with the test protocol and the Gauss prior's tuned settings of
# Set5 (tuned_params.csv, frozen), beside Set5's margins (mtdeq.heldout).
#   heldout_images -> evaluate_heldout (method x task) -> heldout_tables (CSVs, comparison.md, margins.png)

HELDOUT = config["heldout"]
HELDOUT_DIR = f"results/{SCALE}/heldout"
_SEEDED_PRIOR = {m: p for p, m in SEEDED_METHOD.items()}  # eval method -> prior that spread.priors names
# the methods, and every seed of spread.seeds of the methods of heldout.seeded
for _m in HELDOUT["seeded"]:
    if _m not in HELDOUT["methods"] or _SEEDED_PRIOR.get(_m) not in config["spread"]["priors"]:
        raise ValueError(f"heldout.seeded: {_m} must be in heldout.methods and its prior "
                         f"{_SEEDED_PRIOR.get(_m)} in spread.priors {config['spread']['priors']}")
HELDOUT_METHODS = HELDOUT["methods"] + [
    f"{m}_seed{s}" for m in HELDOUT["methods"] if m in HELDOUT["seeded"] for s in config["spread"]["seeds"]
]


rule heldout_images:
    """Draw heldout.images of heldout.dir with heldout.seed; copy them into a folder and list them."""
    input:
        ancient(fetched(HELDOUT["dir"], "heldout.dir")),
    output:
        images=directory("results/{scale}/heldout/images"),
        listing="results/{scale}/heldout/images.csv",
    params:
        dir=HELDOUT["dir"],
        n=HELDOUT["images"],
        seed=HELDOUT["seed"],
    log:
        "logs/{scale}/heldout/images.log",
    benchmark:
        "benchmarks/{scale}/heldout_images.tsv"
    threads: RES["report"]["threads"]
    resources:
        mem_mb=RES["report"]["mem_mb"],
        runtime=RES["report"]["runtime"],
    conda:
        "../../environment.yml"
    shell:
        "python -m mtdeq heldout-draw --dir {params.dir} --images {params.n} --seed {params.seed}"
        " --out-dir {output.images} --list {output.listing} > {log} 2>&1"


use rule evaluate as evaluate_heldout with:
    input:
        images="results/{scale}/heldout/images",
        prior=lambda w: f"results/{w.scale}/models/{prior_of(w.method)}.pt",
        params=lambda w: params_of(w.scale, w.method),
    output:
        "results/{scale}/heldout/eval/{method}/{task}.csv",
    params:
        images=lambda w, input: input.images,
        save_dir="",
        max_images="",
        crop=option("--crop", HELDOUT["crop"]),
        budget_check="",
    log:
        "logs/{scale}/heldout/evaluate/{method}/{task}.log",
    benchmark:
        "benchmarks/{scale}/evaluate_heldout/{method}/{task}.tsv"


rule heldout_tables:
    """Per-image rows and margins on the held-out images, Set5's beside them, and the margins figure."""
    input:
        evals=expand("results/{{scale}}/heldout/eval/{method}/{task}.csv", method=HELDOUT_METHODS, task=TASKS),
        set5=expand("results/{{scale}}/eval/{method}/{task}.csv", method=HELDOUT_METHODS, task=TASKS),
        listing="results/{scale}/heldout/images.csv",
        paper="results/paper/paper_tables.csv",
        tolerance=TOLERANCE_INPUT,
    output:
        per_image="results/{scale}/heldout/per_image.csv",
        margins="results/{scale}/heldout/margins.csv",
        margin_counts="results/{scale}/heldout/margin_counts.csv",
        comparison="results/{scale}/heldout/comparison.csv",
        comparison_md="results/{scale}/heldout/comparison.md",
        figure=report("results/{scale}/heldout/margins.png", caption="../report/heldout.rst", category="Margins"),
        timings="results/{scale}/heldout/timings.csv",
    params:
        methods=HELDOUT_METHODS,
        seed=config["seed"],
        tolerance=tolerance_option,
    log:
        "logs/{scale}/heldout/tables.log",
    benchmark:
        "benchmarks/{scale}/heldout_tables.tsv"
    threads: RES["report"]["threads"]
    resources:
        mem_mb=RES["report"]["mem_mb"],
        runtime=RES["report"]["runtime"],
    conda:
        "../../environment.yml"
    shell:
        "python -m mtdeq heldout --eval-dir results/{wildcards.scale}/heldout/eval"
        " --set5-eval-dir results/{wildcards.scale}/eval --methods {params.methods} --paper {input.paper}"
        " --scale {wildcards.scale} --out-dir results/{wildcards.scale}/heldout --seed {params.seed}"
        " --tolerance {params.tolerance} --draw-list {input.listing}"
        " --benchmarks benchmarks/{wildcards.scale} > {log} 2>&1"


HELDOUT_TARGET = [f"{HELDOUT_DIR}/{name}" for name in (
    "per_image.csv", "margins.csv", "margin_counts.csv", "comparison.csv", "comparison.md", "margins.png",
    "timings.csv")]


rule heldout:
    input:
        HELDOUT_TARGET,
