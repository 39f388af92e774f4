"""Tables, figures and the paper's numbers, from run directories (pandas and seaborn; no
torch, so table and figure jobs start in a second)."""
