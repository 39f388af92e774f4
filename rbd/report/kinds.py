"""How an experiment is shown: the kinds of table and figure the report draws."""

# The three table layouts, and the figure kinds.
TABLE_KINDS = ("method_table", "distribution_table", "compression_table")
FIGURE_KINDS = ("curves", "dims", "switch", "lr_sweep", "scaling", "bases")
# Figures that also get a table beside them (figures/X.md, .tex).
FIGURE_TABLE_KINDS = ("bases",)
KINDS = TABLE_KINDS + FIGURE_KINDS
