# Tables I-II and Fig. 2 of the paper, with our numbers beside the paper's; per-rule timings
# and DEQ convergence statistics of the run. Benchmarks are benchmarks/<scale>/<rule>[/<wildcards>].tsv:
# summarize reads each job's rule name from that path.
import json


localrules:
    config_json,


rule config_json:
    """The validated config of this run, stored in the tables' provenance."""
    output:
        "results/{scale}/config.json",
    params:
        config=config,
    log:
        "logs/{scale}/config_json.log",
    benchmark:
        "benchmarks/{scale}/config_json.tsv"
    run:
        Path(output[0]).write_text(json.dumps(params.config, indent=2, sort_keys=True) + "\n")


rule tables:
    """Tables I and II (CSV + Markdown) from the per-image eval CSVs, beside the paper's values; the
    per-image evidence and the margins' verdicts."""
    input:
        evals=expand("results/{scale}/eval/{method}/{task}.csv", scale=SCALE, method=ALL_METHODS, task=TASKS),
        paper="results/paper/paper_tables.csv",
        config=f"results/{SCALE}/config.json",
        tolerance=TOLERANCE_INPUT,
    output:
        table1="results/table1.csv",
        table2="results/table2.csv",
        table1_md="results/table1.md",
        table2_md="results/table2.md",
        table1_html=report("results/table1.html", caption="../report/table1.rst", category="Tables"),
        table2_html=report("results/table2.html", caption="../report/table2.rst", category="Tables"),
        spread="results/spread.csv",
        budget="results/budget_check.csv",
        validation="results/protocol_validation.csv",
        validation_md="results/protocol_validation.md",
        validation_html=report("results/protocol_validation.html", caption="../report/validation.rst",
                               category="Tables"),
        per_image="results/per_image.csv",
        margins="results/margins.csv",
        margin_counts="results/margin_counts.csv",
        margins_md="results/margins.md",
        seeds="results/seeds.csv",
    params:
        methods=ALL_METHODS,
        eval_dir=lambda w, input: Path(input.config).parent / "eval",
        out_dir=lambda w, output: Path(output.table1).parent,
        scale=SCALE,
        seed=config["seed"],
        tolerance=tolerance_option,
    log:
        f"logs/{SCALE}/tables.log",
    benchmark:
        f"benchmarks/{SCALE}/tables.tsv"
    threads: RES["report"]["threads"]
    resources:
        mem_mb=RES["report"]["mem_mb"],
        runtime=RES["report"]["runtime"],
    conda:
        "../../environment.yml"
    shell:
        "python -m mtdeq tables --eval-dir {params.eval_dir} --methods {params.methods}"
        " --paper {input.paper} --scale {params.scale} --config-json {input.config}"
        " --out-dir {params.out_dir} --seed {params.seed} --tolerance {params.tolerance} > {log} 2>&1"


# Target `extra`: the same tables with the own-settings and seed rows, written to results/extra/
# so that results/table*.{csv,md} (target `all`, checked against the reference) never change
# with what else happens to lie in the eval folder.
use rule tables as tables_extra with:
    input:
        evals=lambda w: expand(
            "results/{scale}/eval/{method}/{task}.csv", scale=SCALE, method=extra_target_methods(), task=TASKS
        ),
        paper="results/paper/paper_tables.csv",
        config=f"results/{SCALE}/config.json",
        tolerance=TOLERANCE_INPUT,
    output:
        table1="results/extra/table1.csv",
        table2="results/extra/table2.csv",
        table1_md="results/extra/table1.md",
        table2_md="results/extra/table2.md",
        table1_html="results/extra/table1.html",
        table2_html="results/extra/table2.html",
        spread="results/extra/spread.csv",
        budget="results/extra/budget_check.csv",
        validation="results/extra/protocol_validation.csv",
        validation_md="results/extra/protocol_validation.md",
        validation_html="results/extra/protocol_validation.html",
        per_image="results/extra/per_image.csv",
        margins="results/extra/margins.csv",
        margin_counts="results/extra/margin_counts.csv",
        margins_md="results/extra/margins.md",
        seeds="results/extra/seeds.csv",
    params:
        methods=lambda w: extra_target_methods(),
    log:
        f"logs/{SCALE}/tables_extra.log",
    benchmark:
        f"benchmarks/{SCALE}/tables_extra.tsv"


rule figure:
    """Fig. 2: ground truth, degraded input and restorations of one image per row, with PSNRs."""
    input:
        images=ancient(fetched(config["data"]["test_set"], "data.test_set")),
        evals=expand(
            "results/{scale}/eval/{method}/{task}.csv",
            scale=SCALE,
            method=sorted(set(config["figure"]["methods"]) | {"gauss"}),
            task=FIG2_TASKS,
        ),
    output:
        report("results/fig2.png", caption="../report/fig2.rst", category="Figure"),
    params:
        test_crop=config["protocol"]["test_crop"],
        eval_dir=lambda w, input: Path(input.evals[0]).parent.parent,
        restored_dir=f"results/{SCALE}/restored",
        images=config["data"]["test_set"],
        rows=config["figure"]["rows"],
        methods=config["figure"]["methods"],
        crop=option("--crop", config["evaluate"]["crop"]),
        scale=SCALE,
    log:
        f"logs/{SCALE}/figure.log",
    benchmark:
        f"benchmarks/{SCALE}/figure.tsv"
    threads: RES["report"]["threads"]
    resources:
        mem_mb=RES["report"]["mem_mb"],
        runtime=RES["report"]["runtime"],
    conda:
        "../../environment.yml"
    shell:
        "python -m mtdeq figure --eval-dir {params.eval_dir} --restored-dir {params.restored_dir}"
        " --images {params.images} --rows {params.rows} --methods {params.methods}"
        " {params.crop} --scale {params.scale} --test-crop {params.test_crop} --out {output} > {log} 2>&1"


rule summarize:
    """Per-job run time and memory (benchmark TSVs) and DEQ convergence (training logs) of the run."""
    input:
        # the last jobs of `all`: every other job of the run has its benchmark file by now
        rules.tables.output,
        rules.figure.output,
    output:
        timings=report("results/{scale}/timings.csv", caption="../report/timings.rst", category="Run"),
        convergence="results/{scale}/convergence.csv",
    params:
        benchmarks=lambda w: f"benchmarks/{w.scale}",
        train_logs=lambda w: f"results/{w.scale}/logs",
        # targets outside `all` write their benchmarks into the same folder: not part of its time
        exclude=["budget", "lr_study"] + ([] if config["heldout"]["in_all"] else HELDOUT_RULES),
    log:
        "logs/{scale}/summarize.log",
    benchmark:
        # not in timings.csv: it is written after the stage has run
        "benchmarks/{scale}/summarize.tsv"
    threads: RES["report"]["threads"]
    resources:
        mem_mb=RES["report"]["mem_mb"],
        runtime=RES["report"]["runtime"],
    conda:
        "../../environment.yml"
    shell:
        "python -m mtdeq summarize --scale {wildcards.scale} --benchmarks {params.benchmarks}"
        " --train-logs {params.train_logs} --out-timings {output.timings}"
        " --out-convergence {output.convergence} --exclude-rules {params.exclude} > {log} 2>&1"
