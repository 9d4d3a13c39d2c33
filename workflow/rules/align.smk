# Stage 3: W_a and the target norm, once per model that has a latent_mas cell with realign on.


rule align:
    input:
        model=lambda wc: model_sentinel(wc.model),
    output:
        align_file("{model}"),
    params:
        settings=align_params,
    log:
        job_log("align", "{model}"),
    threads: threads_for("align", per_model=True)
    resources:
        **resources_for("align", per_model=True),
    conda:
        conda_env()
    script:
        "../scripts/align.py"
