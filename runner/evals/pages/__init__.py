"""Templates, script and style of the HTML pages (runner.evals.page)."""
