# The DEQ priors of Algorithm 1, fine-tuned from the Gauss prior: MTDEQ (the proposed prior,
# all tasks), ST Comp and ST SR (single-task controls of Section III-C). mtdeq_seed<s> is the
# prior retrained with seed s (spread.seeds x spread.priors / extra.seeds): the run-to-run spread;
# st_comp_seed<s>, st_sr_seed<s> alike (gauss_budget_seed<s>: train_control_seed, denoiser.smk).


rule train_deq:
    """Train one DEQ prior with the FB fixed point (Eq. 3) and Jacobian-free backprop."""
    input:
        data=[ancient(f) for f in train_data()],
        init="results/{scale}/models/gauss.pt",
    output:
        "results/{scale}/models/{prior}.pt",
    wildcard_constraints:
        prior="(?:mtdeq|st_comp|st_sr)(?:_seed[0-9]+)?",
    params:
        protocol=protocol_args("train"),
        precision=config["precision"],
        task_set=lambda w: prior_setting(w.prior, "task_set"),
        n_tasks=lambda w: prior_setting(w.prior, "n_tasks"),
        steps=lambda w: prior_setting(w.prior, "steps"),
        train_dirs=config["data"]["train_dirs"],
        crop=DEQ["crop"],
        batch_size=DEQ["batch_size"],
        lr=DEQ["lr"],
        lr_step=DEQ["lr_step"],
        lr_gamma=DEQ["lr_gamma"],
        lr_warmup=DEQ["lr_warmup"],
        accum=DEQ["accum"],
        eta=DEQ["eta"],
        tol=DEQ["tol"],
        early=early_tol_option(),
        max_iter=DEQ["max_iter"],
        diverge_at=DEQ["diverge_at"],
        solver=DEQ["solver"],
        batch_tasks="--batch-tasks" if DEQ["batch_tasks"] else "--no-batch-tasks",
        comp_init=DEQ["comp_init"],
        layout="--channels-last" if DEQ["channels_last"] else "--no-channels-last",
        seed=lambda w: prior_seed(w.prior),
        checkpoint_every=DEQ["checkpoint_every"],
        state="",  # the budget target shares one resume state between the budgets of a run
        val_dir=config["data"]["val_set"],
        val_every=DEQ["val_every"],
        val_images=DEQ["val_images"],
        val_task="",  # the task set's default (the lr_study target validates on several)
        validation=validation_args(),
        launcher=launcher("train"),
        device=device("train"),
    log:
        stdout="logs/{scale}/train_deq/{prior}.log",
        csv="results/{scale}/logs/{prior}.csv",
    benchmark:
        "benchmarks/{scale}/train_deq/{prior}.tsv"
    priority: 10  # the long jobs first, so that the short evaluations fill both cores at the end
    threads: RES["train"]["threads"]
    resources:
        mem_mb=RES["train"]["mem_mb"],
        runtime=RES["train"]["runtime"],
        gpu=RES["train"]["gpus"],
    conda:
        "../../environment.yml"
    shell:
        "{params.launcher} -m mtdeq --precision {params.precision} train-deq --out {output} --init {input.init}"
        " --task-set {params.task_set} --n-tasks {params.n_tasks} --train-dirs {params.train_dirs}"
        " --crop {params.crop} --batch-size {params.batch_size} --steps {params.steps}"
        " --lr {params.lr} --lr-step {params.lr_step} --lr-gamma {params.lr_gamma}"
        " --lr-warmup {params.lr_warmup} --accum {params.accum}"
        " --eta {params.eta} --tol {params.tol} {params.early} --max-iter {params.max_iter}"
        " --diverge-at {params.diverge_at} --solver {params.solver} {params.batch_tasks} --comp-init {params.comp_init}"
        " {params.layout}"
        " --seed {params.seed}"
        " --log-csv {log.csv} --checkpoint-every {params.checkpoint_every} {params.state}"
        " --val-dir {params.val_dir} --val-every {params.val_every} --val-images {params.val_images} {params.val_task}"
        " {params.validation} --threads {threads} --device {params.device} {params.protocol} > {log.stdout} 2>&1"
