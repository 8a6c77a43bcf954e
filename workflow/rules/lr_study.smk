# Target `lr_study` (outside `all`): learning rate, warm-up and batch for a longer MTDEQ run. Each
# run of lr_study.runs trains the MTDEQ prior from the Gauss prior with its deq.* overrides and
# validates it on data.val_set (Set14; never Set5) every lr_study.val_every steps; the stage
# `python -m mtdeq lr-study` collects the logs (mtdeq.lrstudy).

use rule train_deq as lr_study_train with:
    input:
        data=[ancient(f) for f in train_data()],
        init="results/{scale}/models/gauss.pt",
    output:
        "results/{scale}/lr_study/models/{run}.pt",
    wildcard_constraints:
        run="|".join(re.escape(r) for r in LR_RUNS) or "^$",
    params:
        task_set=PRIORS["mtdeq"]["task_set"],
        n_tasks=PRIORS["mtdeq"]["n_tasks"],
        steps=lambda w: lr_setting(w.run, "steps"),
        batch_size=lambda w: lr_setting(w.run, "batch_size"),
        lr=lambda w: lr_setting(w.run, "lr"),
        lr_step=lambda w: lr_setting(w.run, "lr_step"),
        lr_gamma=lambda w: lr_setting(w.run, "lr_gamma"),
        lr_warmup=lambda w: lr_setting(w.run, "lr_warmup"),
        accum=lambda w: lr_setting(w.run, "accum"),
        tol=lambda w: lr_setting(w.run, "tol"),
        early=lambda w: early_tol_option(LR_RUNS[w.run], LR_STUDY["base"]),
        batch_tasks=lambda w: lr_flag(w.run, "batch_tasks", "batch-tasks"),
        comp_init=lambda w: lr_setting(w.run, "comp_init"),
        layout=lambda w: lr_flag(w.run, "channels_last", "channels-last"),
        seed=config["seed"],
        val_every=LR_STUDY["val_every"],
        val_images=LR_STUDY["val_images"],
        val_task=f"--val-task {LR_STUDY['val_task']}",
    log:
        stdout="logs/{scale}/lr_study/{run}.log",
        csv="results/{scale}/lr_study/logs/{run}.csv",
    benchmark:
        "benchmarks/{scale}/lr_study/{run}.tsv"


rule lr_study:
    """The learning-rate / batch study: lr_study.csv, lr_study.md and lr_study.png (mtdeq.lrstudy)."""
    input:
        logs=lr_study_files("logs"),
        models=lr_study_files("models"),
    output:
        csv=f"{LR_DIR}/lr_study.csv",
        markdown=f"{LR_DIR}/lr_study.md",
        figure=report(f"{LR_DIR}/lr_study.png", caption="../report/lr_study.rst", category="Budget"),
    params:
        logs=lambda w, input: " ".join(f"{r}={p}" for r, p in zip(LR_RUNS, input.logs)),
        spec=json.dumps({r: {k: lr_setting(r, k) for k in ("lr", "lr_warmup", "accum", "batch_size", "steps")}
                         for r in LR_RUNS}),
        scale=SCALE,
    log:
        f"logs/{SCALE}/lr_study/lr_study.log",
    threads: RES["report"]["threads"]
    resources:
        mem_mb=RES["report"]["mem_mb"],
        runtime=RES["report"]["runtime"],
    conda:
        "../../environment.yml"
    shell:
        "python -m mtdeq lr-study --log {params.logs} --spec '{params.spec}' --out {output.csv}"
        " --markdown {output.markdown} --figure {output.figure} --scale {params.scale} > {log} 2>&1"
