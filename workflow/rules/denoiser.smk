# The Gauss prior (a Gaussian denoiser) and the same-budget control trained further from it.

DEN = config["denoiser"]
WEIGHTS = config["model"]["weights"]["path"]


rule pretrain_denoiser:
    """Gauss prior: train Q(x, sigma) on x + sigma n, or (steps 0) convert pretrained weights."""
    input:
        data=[ancient(f) for f in train_data()],
        weights=[ancient(fetched(WEIGHTS, "model.weights.path"))] if WEIGHTS else [],
    output:
        "results/{scale}/models/gauss.pt",
    params:
        precision=config["precision"],
        backbone=config["model"]["backbone"],
        nc=config["model"]["nc"],
        nb=config["model"]["nb"],
        init=option("--init", WEIGHTS),
        train_dirs=config["data"]["train_dirs"],
        crop=DEN["crop"],
        batch_size=DEN["batch_size"],
        steps=DEN["steps"],
        lr=DEN["lr"],
        lr_milestones=DEN["lr_milestones"],
        lr_gamma=DEN["lr_gamma"],
        sigma_min=DEN["sigma_min"],
        sigma_max=DEN["sigma_max"],
        loss=DEN["loss"],
        seed=config["seed"],
        checkpoint_every=DEN["checkpoint_every"],
        val_dir=config["data"]["val_set"],
        val_every=DEN["val_every"],
        val_images=DEN["val_images"],
        validation=validation_args(),
        launcher=launcher("denoiser"),
        device=device("denoiser"),
    log:
        stdout="logs/{scale}/pretrain_denoiser.log",
        csv="results/{scale}/logs/gauss.csv",
    benchmark:
        "benchmarks/{scale}/pretrain_denoiser.tsv"
    threads: RES["denoiser"]["threads"]
    resources:
        mem_mb=RES["denoiser"]["mem_mb"],
        runtime=RES["denoiser"]["runtime"],
        gpu=RES["denoiser"]["gpus"],
    conda:
        "../../environment.yml"
    shell:
        "{params.launcher} -m mtdeq --precision {params.precision} pretrain-denoiser --out {output} --backbone {params.backbone}"
        " --nc {params.nc} --nb {params.nb} {params.init} --train-dirs {params.train_dirs}"
        " --crop {params.crop} --batch-size {params.batch_size} --steps {params.steps}"
        " --lr {params.lr} --lr-milestones {params.lr_milestones} --lr-gamma {params.lr_gamma}"
        " --sigma-min {params.sigma_min} --sigma-max {params.sigma_max} --loss {params.loss}"
        " --seed {params.seed} --log-csv {log.csv} --checkpoint-every {params.checkpoint_every}"
        " --val-dir {params.val_dir} --val-every {params.val_every} --val-images {params.val_images}"
        " {params.validation} --threads {threads} --device {params.device} > {log.stdout} 2>&1"


rule train_control:
    """'Gauss + same budget': the Gauss prior trained further as a denoiser with the MTDEQ budget."""
    input:
        data=[ancient(f) for f in train_data()],
        init="results/{scale}/models/gauss.pt",
    output:
        "results/{scale}/models/gauss_budget.pt",
    params:
        precision=config["precision"],
        backbone=config["model"]["backbone"],
        nc=config["model"]["nc"],
        nb=config["model"]["nb"],
        train_dirs=config["data"]["train_dirs"],
        crop=DEQ["crop"],
        batch_size=DEQ["batch_size"],
        steps=config["priors"]["mtdeq"]["steps"],
        lr=DEQ["lr"],
        lr_milestones=step_milestones(DEQ["lr_step"], config["priors"]["mtdeq"]["steps"]),
        lr_gamma=DEQ["lr_gamma"],
        sigma_min=config["control"]["sigma_min"],
        sigma_max=config["control"]["sigma_max"],
        loss=config["control"]["loss"],
        seed=config["seed"],
        checkpoint_every=DEQ["checkpoint_every"],
        state="",  # the budget target shares one resume state between the budgets of a run
        val_dir=config["data"]["val_set"],
        val_every=DEQ["val_every"],
        val_images=DEQ["val_images"],
        validation=validation_args(),
        launcher=launcher("train"),
        device=device("train"),
    log:
        stdout="logs/{scale}/train_control.log",
        csv="results/{scale}/logs/gauss_budget.csv",
    benchmark:
        "benchmarks/{scale}/train_control.tsv"
    threads: RES["train"]["threads"]
    resources:
        mem_mb=RES["train"]["mem_mb"],
        runtime=RES["train"]["runtime"],
        gpu=RES["train"]["gpus"],
    conda:
        "../../environment.yml"
    shell:
        "{params.launcher} -m mtdeq --precision {params.precision} pretrain-denoiser --out {output} --backbone {params.backbone}"
        " --nc {params.nc} --nb {params.nb} --init {input.init} --train-dirs {params.train_dirs}"
        " --crop {params.crop} --batch-size {params.batch_size} --steps {params.steps}"
        " --lr {params.lr} --lr-milestones {params.lr_milestones} --lr-gamma {params.lr_gamma}"
        " --sigma-min {params.sigma_min} --sigma-max {params.sigma_max} --loss {params.loss}"
        " --seed {params.seed} --log-csv {log.csv} --checkpoint-every {params.checkpoint_every} {params.state}"
        " --val-dir {params.val_dir} --val-every {params.val_every} --val-images {params.val_images}"
        " {params.validation} --threads {threads} --device {params.device} > {log.stdout} 2>&1"


# The control retrained with another seed (spread.priors contains gauss_budget): gauss_budget_seed<s>.
use rule train_control as train_control_seed with:
    output:
        "results/{scale}/models/gauss_budget_seed{seed}.pt",
    wildcard_constraints:
        seed=r"[0-9]+",
    params:
        seed=lambda w: int(w.seed),
    log:
        stdout="logs/{scale}/train_control_seed/{seed}.log",
        csv="results/{scale}/logs/gauss_budget_seed{seed}.csv",
    benchmark:
        "benchmarks/{scale}/train_control_seed/{seed}.tsv"
