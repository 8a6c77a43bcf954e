# Test-time hyper-parameters are tuned per task on data.val_set (Set14, never Set5) for the
# Gauss prior (PnP-ADMM) and for RED; every ADMM prior is then evaluated on data.test_set with
# the Gauss prior's parameters, as in the paper (Section III-C). Extra rows: "<m>_own" uses the
# settings tuned for prior m itself (tune_admm_own), "proposed_seed<s>" the prior mtdeq_seed<s>.

TUNE = config["tune"]
EVAL = config["evaluate"]
TASKS = EVAL["tasks"]
METHODS = EVAL["methods"]
# edge extension of both grid searches (tune.extend_rounds beyond the grid, within the bounds)
EXTEND = (f"--extend-rounds {TUNE['extend_rounds']} --max-iterations {TUNE['max_iterations']}"
          f" --sigma-cap {TUNE['sigma_cap']} --min-gain {TUNE['min_gain']}")
# Table rows of `all`: evaluate.methods plus the extras of tune.own_priors and spread.seeds x
# spread.priors (seeds and own_priors empty by default).
ALL_METHODS = METHODS + extra_methods(TUNE["own_priors"], config["spread"]["seeds"], "spread.seeds",
                                      config["spread"]["priors"])


rule tune_admm:
    """Grid-search K, sigma_max, sigma_min, lam of PnP-ADMM with the Gauss prior for one task."""
    input:
        images=ancient(fetched(config["data"]["val_set"], "data.val_set")),
        test_images=ancient(fetched(config["data"]["test_set"], "data.test_set")),
        prior="results/{scale}/models/gauss.pt",
    output:
        "results/{scale}/tune/admm_{task}.csv",
    params:
        protocol=protocol_args("test"),
        precision=config["precision"],
        images=config["data"]["val_set"],
        max_images=TUNE["max_images"],
        validation=validation_args(),
        crop=TUNE["crop"],
        iterations=TUNE["admm"]["iterations"],
        sigma_max=TUNE["admm"]["sigma_max"],
        sigma_min=TUNE["admm"]["sigma_min"],
        lam_scale=TUNE["admm"]["lam_scale"],
        edges=EXTEND,
        seed=config["seed"],
        channels_last=layout_option(TUNE),
        red_accel=RED_ACCEL,
        device=device("tune"),
    log:
        "logs/{scale}/tune/admm_{task}.log",
    benchmark:
        "benchmarks/{scale}/tune_admm/{task}.tsv"
    threads: RES["tune"]["threads"]
    resources:
        mem_mb=RES["tune"]["mem_mb"],
        runtime=RES["tune"]["runtime"],
        gpu=RES["tune"]["gpus"],
    conda:
        "../../environment.yml"
    shell:
        "python -m mtdeq --precision {params.precision} tune --method admm --task {wildcards.task} --prior {input.prior}"
        " --images {params.images} --max-images {params.max_images} --crop {params.crop} {params.validation}"
        " --iterations {params.iterations} --sigma-max {params.sigma_max}"
        " --sigma-min {params.sigma_min} --lam-scale {params.lam_scale} {params.edges}"
        " --seed {params.seed} {params.channels_last} {params.red_accel} --device {params.device} --out {output}"
        " {params.protocol} > {log} 2>&1"


rule tune_red:
    """Grid-search K, lam, sigma_denoise, step of RED with the Gauss prior for one task."""
    input:
        images=ancient(fetched(config["data"]["val_set"], "data.val_set")),
        test_images=ancient(fetched(config["data"]["test_set"], "data.test_set")),
        prior="results/{scale}/models/gauss.pt",
    output:
        "results/{scale}/tune/red_{task}.csv",
    params:
        protocol=protocol_args("test"),
        precision=config["precision"],
        images=config["data"]["val_set"],
        max_images=TUNE["max_images"],
        validation=validation_args(),
        crop=TUNE["crop"],
        iterations=TUNE["red"]["iterations"],
        lam=TUNE["red"]["lam"],
        sigma=TUNE["red"]["sigma"],
        step=TUNE["red"]["step"],
        red_tol=TUNE["red"]["tol"],
        edges=EXTEND,
        seed=config["seed"],
        channels_last=layout_option(TUNE),
        red_accel=RED_ACCEL,
        device=device("tune"),
    log:
        "logs/{scale}/tune/red_{task}.log",
    benchmark:
        "benchmarks/{scale}/tune_red/{task}.tsv"
    threads: RES["tune"]["threads"]
    resources:
        mem_mb=RES["tune"]["mem_mb"],
        runtime=RES["tune"]["runtime"],
        gpu=RES["tune"]["gpus"],
    conda:
        "../../environment.yml"
    shell:
        "python -m mtdeq --precision {params.precision} tune --method red --task {wildcards.task} --prior {input.prior}"
        " --images {params.images} --max-images {params.max_images} --crop {params.crop} {params.validation}"
        " --iterations {params.iterations} --red-lam {params.lam} --red-sigma {params.sigma}"
        " --red-step {params.step} --red-tol {params.red_tol} {params.edges} --seed {params.seed}"
        " {params.channels_last} {params.red_accel}"
        " --device {params.device}"
        " --out {output} {params.protocol} > {log} 2>&1"


rule collect_tuned:
    """Best candidate per (algorithm, task) -> tuned_params.csv (flags values on a grid edge)."""
    input:
        admm=expand("results/{{scale}}/tune/admm_{task}.csv", task=TASKS),
        red=expand("results/{{scale}}/tune/red_{task}.csv", task=TASKS) if "red" in METHODS else [],
    output:
        "results/{scale}/tuned_params.csv",
    log:
        "logs/{scale}/collect_tuned.log",
    benchmark:
        "benchmarks/{scale}/collect_tuned.tsv"
    threads: RES["report"]["threads"]
    resources:
        mem_mb=RES["report"]["mem_mb"],
        runtime=RES["report"]["runtime"],
    conda:
        "../../environment.yml"
    shell:
        "python -m mtdeq collect-tuned --inputs {input} --out {output} > {log} 2>&1"


# Extra analysis: the same PnP-ADMM grid search, on the same validation images, for another
# prior ("own settings"), so that a prior that merely converges faster at the Gauss prior's K
# is not mistaken for a better one.
use rule tune_admm as tune_admm_own with:
    input:
        images=ancient(fetched(config["data"]["val_set"], "data.val_set")),
        test_images=ancient(fetched(config["data"]["test_set"], "data.test_set")),
        prior=lambda w: f"results/{w.scale}/models/{PRIOR_OF[w.method]}.pt",
    output:
        "results/{scale}/tune_own/{method}_{task}.csv",
    wildcard_constraints:
        method="|".join(OWN_PRIORS),
    log:
        "logs/{scale}/tune_own/{method}_{task}.log",
    benchmark:
        "benchmarks/{scale}/tune_admm_own/{method}_{task}.tsv"


use rule collect_tuned as collect_tuned_own with:
    input:
        admm=expand("results/{{scale}}/tune_own/{{method}}_{task}.csv", task=TASKS),
    output:
        "results/{scale}/tuned_params_own/{method}.csv",
    wildcard_constraints:
        method="|".join(OWN_PRIORS),
    log:
        "logs/{scale}/collect_tuned_own/{method}.log",
    benchmark:
        "benchmarks/{scale}/collect_tuned_own/{method}.tsv"


rule evaluate:
    """Restore the test images of one task with one method; per-image PSNR/SSIM CSV."""
    input:
        images=ancient(fetched(config["data"]["test_set"], "data.test_set")),
        prior=lambda w: f"results/{w.scale}/models/{prior_of(w.method)}.pt",
        params=lambda w: params_of(w.scale, w.method),
    output:
        "results/{scale}/eval/{method}/{task}.csv",
    wildcard_constraints:
        method=EVAL_METHOD_RE,
    params:
        protocol=protocol_args("test"),
        precision=config["precision"],
        images=config["data"]["test_set"],
        save_dir=lambda w: save_dir_option(w.scale, w.method, w.task),
        max_images=option("--max-images", EVAL["max_images"]),
        crop=option("--crop", EVAL["crop"]),
        seed=config["seed"],
        channels_last=layout_option(EVAL),
        red_accel=RED_ACCEL,
        red_tol=TUNE["red"]["tol"],
        # the baselines' convergence check: RED and Gauss also solved with twice the iterations
        budget_check=lambda w: (
            ("--budget-curve" if EVAL["budget_curve"] else "--budget-check") if w.method in ("red", "gauss") else ""
        ),
        device=device("evaluate"),
        reuse="",  # budget_evaluate: --reuse <model> <csv> of all's run (evaluate --help)
    log:
        "logs/{scale}/evaluate/{method}/{task}.log",
    benchmark:
        "benchmarks/{scale}/evaluate/{method}/{task}.tsv"
    threads: RES["evaluate"]["threads"]
    resources:
        mem_mb=RES["evaluate"]["mem_mb"],
        runtime=RES["evaluate"]["runtime"],
        gpu=RES["evaluate"]["gpus"],
    conda:
        "../../environment.yml"
    shell:
        "python -m mtdeq --precision {params.precision} evaluate --method {wildcards.method} --prior {input.prior}"
        " --task {wildcards.task} --images {params.images} --params {input.params}"
        " --out {output} {params.save_dir} {params.max_images} {params.crop}"
        " --seed {params.seed} --red-tol {params.red_tol} {params.budget_check} {params.channels_last} {params.red_accel}"
        " --device {params.device} {params.protocol} {params.reuse} > {log} 2>&1"
