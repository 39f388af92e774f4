"""What the Snakemake workflow needs beyond the training: config validation and expansion
into runs, the cost model behind job sizes, and job-log support (no torch)."""
