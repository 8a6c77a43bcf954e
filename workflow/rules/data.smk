# Data: every file is verified against a SHA-256 and written atomically; a job's output is a
# sentinel data/.fetched/<name>.ok. Downstream rules take sentinels as ancient() inputs: a
# re-fetch (e.g. from a mirror instead of upstream) yields the same verified bytes, so it
# must not retrain anything.


rule fetch:
    """Copy (MTDEQ_DATA_MIRROR / data.mirror) or download one manifest dataset into data/."""
    input:
        manifest=config["data"]["manifest"],
    output:
        touch(f"{DATA}/.fetched/{{dataset}}.ok"),
    wildcard_constraints:
        dataset="|".join(re.escape(name) for name in MANIFEST),
    params:
        dest=lambda w, output: Path(output[0]).parent.parent,
        mirror=option("--mirror", config["data"]["mirror"]),
    log:
        "logs/fetch/{dataset}.log",
    benchmark:
        "benchmarks/fetch/{dataset}.tsv"
    threads: RES["fetch"]["threads"]
    resources:
        mem_mb=RES["fetch"]["mem_mb"],
        runtime=RES["fetch"]["runtime"],
    conda:
        "../../environment.yml"
    shell:
        "python -m mtdeq fetch --dataset {wildcards.dataset} --manifest {input.manifest}"
        " --dest {params.dest} {params.mirror} > {log} 2>&1"


rule fetch_download:
    """Download one archive of data.downloads (paper scale) and unpack it into data/<name>."""
    output:
        touch(f"{DATA}/.fetched/{{name}}.ok"),
    wildcard_constraints:
        name="|".join(re.escape(name) for name in config["data"]["downloads"]) or "(?!)",
    params:
        url=lambda w: config["data"]["downloads"][w.name]["url"],
        sha256=lambda w: config["data"]["downloads"][w.name]["sha256"],
        dest=lambda w, output: Path(output[0]).parent.parent / w.name,
        extract=lambda w: "--extract" if config["data"]["downloads"][w.name]["extract"] else "",
    log:
        "logs/fetch/{name}.log",
    benchmark:
        "benchmarks/fetch/{name}.tsv"
    threads: RES["fetch"]["threads"]
    resources:
        mem_mb=RES["fetch"]["mem_mb"],
        runtime=RES["fetch"]["runtime"],
    conda:
        "../../environment.yml"
    shell:
        "python -m mtdeq fetch --url '{params.url}' --sha256 '{params.sha256}'"
        " --dest {params.dest} {params.extract} > {log} 2>&1"


rule fetch_weights:
    """Download the pretrained weights of model.weights.url (e.g. DPIR drunet_color.pth)."""
    output:
        touch(f"{DATA}/.fetched/model_weights.ok"),
    params:
        url=config["model"]["weights"]["url"],
        sha256=config["model"]["weights"]["sha256"],
        dest=config["model"]["weights"]["path"],
    log:
        "logs/fetch/model_weights.log",
    benchmark:
        "benchmarks/fetch/model_weights.tsv"
    threads: RES["fetch"]["threads"]
    resources:
        mem_mb=RES["fetch"]["mem_mb"],
        runtime=RES["fetch"]["runtime"],
    conda:
        "../../environment.yml"
    shell:
        "python -m mtdeq fetch --url '{params.url}' --sha256 '{params.sha256}'"
        " --dest {params.dest} > {log} 2>&1"
