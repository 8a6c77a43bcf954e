# Target `budget` (outside `all`): does the MTDEQ gain grow with training?  The MTDEQ prior
# ("proposed") and the same-budget control ("control": the Gauss prior trained further as a plain
# denoiser) are trained as one run each, one job per budget of budget.steps: the job of a budget
# resumes the run's shared state (results/<scale>/budget/state/) where the previous budget's job
# left it, so every budget is a checkpoint of the same run and the target resumes job by job.
# Every seed of budget.seeds is such a run up to its own largest budget (`up_to`) and its own
# target: rows/s<seed>.csv holds its per-image rows, stamped with the config's budget_id, so a
# seed's rows can be committed (budget.rows) when it finishes and a later session adds the next.
# Every model is evaluated on the test tasks with the Gauss prior's tuned settings; the first
# seed's largest budget also with each prior's own (tuned on data.val_set like the Gauss prior's).
# mtdeq.budget combines the seeds' rows into budget.csv, the margins and budget.png; the Gauss row
# is the main run's eval/gauss.

use rule train_deq as budget_train_proposed with:
    input:
        data=[ancient(f) for f in train_data()],
        init="results/{scale}/models/gauss.pt",
        previous=budget_previous,
    output:
        "results/{scale}/budget/models/{method}_s{seed}_{steps}.pt",
    wildcard_constraints:
        method="proposed",
        seed=r"\d+",
        steps=r"\d+",
    params:
        task_set=PRIORS["mtdeq"]["task_set"],
        n_tasks=PRIORS["mtdeq"]["n_tasks"],
        steps=lambda w: int(w.steps),
        seed=lambda w: int(w.seed),
        batch_tasks=BATCH_TASKS,
        comp_init=deq_setting("comp_init", BUDGET["deq"]),
        layout="--channels-last" if deq_setting("channels_last", BUDGET["deq"]) else "--no-channels-last",
        tol=deq_setting("tol", BUDGET["deq"]),
        early=early_tol_option(BUDGET["deq"]),
        state=budget_state,
    log:
        stdout="logs/{scale}/budget/train/{method}_s{seed}_{steps}.log",
        csv="results/{scale}/budget/logs/{method}_s{seed}_{steps}.csv",
    benchmark:
        "benchmarks/{scale}/budget/train/{method}_s{seed}_{steps}.tsv"


use rule train_control as budget_train_control with:
    input:
        data=[ancient(f) for f in train_data()],
        init="results/{scale}/models/gauss.pt",
        previous=budget_previous,
    output:
        "results/{scale}/budget/models/{method}_s{seed}_{steps}.pt",
    wildcard_constraints:
        method="control",
        seed=r"\d+",
        steps=r"\d+",
    params:
        steps=lambda w: int(w.steps),
        lr_milestones=lambda w: step_milestones(DEQ["lr_step"], int(w.steps)),
        seed=lambda w: int(w.seed),
        state=budget_state,
    log:
        stdout="logs/{scale}/budget/train/{method}_s{seed}_{steps}.log",
        csv="results/{scale}/budget/logs/{method}_s{seed}_{steps}.csv",
    benchmark:
        "benchmarks/{scale}/budget/train/{method}_s{seed}_{steps}.tsv"


use rule tune_admm as budget_tune_own with:
    input:
        images=ancient(fetched(config["data"]["val_set"], "data.val_set")),
        test_images=ancient(fetched(config["data"]["test_set"], "data.test_set")),
        prior="results/{scale}/budget/models/{method}_s{seed}_{steps}.pt",
    output:
        "results/{scale}/budget/tune_own/{method}_s{seed}_{steps}/{task}.csv",
    wildcard_constraints:
        method="|".join(BUDGET_PRIOR),
    log:
        "logs/{scale}/budget/tune_own/{method}_s{seed}_{steps}/{task}.log",
    benchmark:
        "benchmarks/{scale}/budget/tune_own/{method}_s{seed}_{steps}/{task}.tsv"


use rule collect_tuned as budget_collect_own with:
    input:
        admm=expand("results/{{scale}}/budget/tune_own/{{method}}_s{{seed}}_{{steps}}/{task}.csv", task=TASKS),
    output:
        "results/{scale}/budget/tuned_params_own/{method}_s{seed}_{steps}.csv",
    wildcard_constraints:
        method="|".join(BUDGET_PRIOR),
    log:
        "logs/{scale}/budget/collect_tuned_own/{method}_s{seed}_{steps}.log",
    benchmark:
        "benchmarks/{scale}/budget/collect_tuned_own/{method}_s{seed}_{steps}.tsv"


use rule evaluate as budget_evaluate with:
    input:
        images=ancient(fetched(config["data"]["test_set"], "data.test_set")),
        prior="results/{scale}/budget/models/{method}_s{seed}_{steps}.pt",
        params=lambda w: (f"results/{w.scale}/tuned_params.csv" if w.settings == "gauss" else
                          f"results/{w.scale}/budget/tuned_params_own/{w.method}_s{w.seed}_{w.steps}.csv"),
        reuse=budget_reuse,
    output:
        "results/{scale}/budget/eval/{method}/s{seed}/{steps}/{settings}/{task}.csv",
    wildcard_constraints:
        method="|".join(BUDGET_PRIOR),
        settings="gauss|own",
    params:
        save_dir="",
        budget_check="",
        reuse=lambda w, input: f"--reuse {input.reuse[0]} {input.reuse[1]}" if input.reuse else "",
    log:
        "logs/{scale}/budget/evaluate/{method}/s{seed}/{steps}/{settings}/{task}.log",
    benchmark:
        "benchmarks/{scale}/budget/evaluate/{method}/s{seed}/{steps}/{settings}/{task}.tsv"


rule budget_rows:
    """One seed of the curve: the per-image rows of its models at every budget up to its up_to."""
    input:
        evals=lambda w: budget_seed_evaluations(int(w.seed)),
    output:
        f"{BUDGET_DIR}/rows/s{{seed}}.csv",
    wildcard_constraints:
        seed=r"\d+",
    params:
        runs=f"{BUDGET_DIR}/eval",
        budget_id=BUDGET_ID,
    log:
        f"logs/{SCALE}/budget/rows/s{{seed}}.log",
    threads: RES["report"]["threads"]
    resources:
        mem_mb=RES["report"]["mem_mb"],
        runtime=RES["report"]["runtime"],
    conda:
        "../../environment.yml"
    shell:
        "python -m mtdeq budget-rows --runs {params.runs} --seed {wildcards.seed} --budget-id {params.budget_id}"
        " --out {output} {input.evals} > {log} 2>&1"


rule budget:
    """The training-budget curve from every seed's rows: budget.csv, margins and budget.png (mtdeq.budget)."""
    input:
        rows=[ancient(f) for f in budget_rows_files()],
        gauss=expand("results/{scale}/eval/gauss/{task}.csv", scale=SCALE, task=TASKS),
        paper="results/paper/paper_tables.csv",
        tolerance=TOLERANCE_INPUT,
    output:
        csv=f"{BUDGET_DIR}/budget.csv",
        margins=f"{BUDGET_DIR}/margins.csv",
        margins_md=f"{BUDGET_DIR}/margins.md",
        task_margins=f"{BUDGET_DIR}/margins_per_task.csv",
        trend=f"{BUDGET_DIR}/trend.csv",
        extrapolation=f"{BUDGET_DIR}/extrapolation.csv",
        figure=report(f"{BUDGET_DIR}/budget.png", caption="../report/budget.rst", category="Budget"),
    params:
        seed=config["seed"],
        budget_id=BUDGET_ID,
        gauss_dir=lambda w, input: Path(input.gauss[0]).parent,
        scale=SCALE,
        tolerance=tolerance_option,
        paper_steps=PAPER_STEPS_HERE,
    log:
        f"logs/{SCALE}/budget/budget.log",
    threads: RES["report"]["threads"]
    resources:
        mem_mb=RES["report"]["mem_mb"],
        runtime=RES["report"]["runtime"],
    conda:
        "../../environment.yml"
    shell:
        "python -m mtdeq budget --rows {input.rows} --budget-id {params.budget_id} --gauss-dir {params.gauss_dir}"
        " --paper {input.paper} --out {output.csv} --margins {output.margins} --figure {output.figure}"
        " --task-margins {output.task_margins} --seed {params.seed} --scale {params.scale}"
        " --paper-steps {params.paper_steps}"
        " --tolerance {params.tolerance} > {log} 2>&1"
