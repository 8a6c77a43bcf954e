# mtdeq: replication of "Prior for Multi-Task Inverse Problems in Image Reconstruction Using
# Deep Equilibrium Models" as a Snakemake workflow.
#
#   snakemake --cores 8 all                                   quick scale (config/config.yaml)
#   snakemake --configfile config/ci.yaml --cores 2 all       toy scale, a few minutes
#   snakemake --profile workflow/profiles/slurm --configfile config/paper.yaml all
#   snakemake --cores 8 extra                                 labelled extras (own settings, seeds)
#   snakemake --cores 2 budget                                the training-budget curve (hours)
#   snakemake --cores 2 lr_study                              lr / warm-up / batch runs, on Set14
#   snakemake --cores 2 heldout                               margins on held-out BSDS500 test images
#
# DAG: fetch -> pretrain_denoiser (Gauss prior) -> train_deq (mtdeq, st_comp, st_sr)
#      and train_control (gauss_budget) -> tune_admm / tune_red on Set14 -> collect_tuned
#      -> evaluate (method x task) on Set5 -> tables, figure -> summarize (timings, convergence).
#      Target `extra`: own-settings tuning, seed retraining -> results/extra/ tables.
# Every rule calls one stage, `python -m mtdeq <stage> ...`, which also runs by hand.

import re

from snakemake.utils import min_version, validate

min_version("8.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


wildcard_constraints:
    scale=re.escape(config["scale"]),
    task=r"[a-z0-9_.]+",


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/denoiser.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/budget.smk"
include: "workflow/rules/lr_study.smk"
include: "workflow/rules/heldout.smk"


rule all:
    input:
        "results/table1.csv",
        "results/table2.csv",
        "results/table1.md",
        "results/table2.md",
        "results/fig2.png",
        expand("results/{scale}/{name}.csv", scale=SCALE, name=("timings", "convergence")),
        HELDOUT_TARGET if config["heldout"]["in_all"] else [],
    default_target: True


# Extra, labelled analyses outside `all`: priors tuned with their own settings and the priors of
# spread.priors (default MTDEQ) retrained with other seeds (tune.own_priors / spread.seeds, else
# extra.own_priors / extra.seeds) -> results/extra/table{1,2}.{csv,md}, results/extra/spread.csv.
rule extra:
    input:
        rules.tables_extra.output,
