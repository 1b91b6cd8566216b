# hcsflow: raw high-content-screening plates -> profiles -> drug-response clusters.
# Stages live in rules/; configuration is validated in rules/common.smk.
from snakemake.utils import min_version

min_version("8.20")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/discover.smk"
include: "rules/illumination.smk"
include: "rules/segment.smk"
include: "rules/train.smk"
include: "rules/measure.smk"
include: "rules/profiles.smk"
include: "rules/analysis.smk"


rule all:
    default_target: True
    input:
        all_targets(),
